"""Flush-to-zero: the floating-point control register (:mod:`fastseq._fpenv`)."""

import platform

import pytest

from fastseq import _fpenv
from fastseq.kernels import _fpenv as kfp

needs_ftz = pytest.mark.skipif(
    not _fpenv.AVAILABLE,
    reason=f"no flush-to-zero setting handled on this machine ({platform.machine()}): "
           "fastseq leaves the floating-point environment alone here")

#: MXCSR's bits 0-5 are sticky exception flags raised by arithmetic (not a
#: setting): left out when comparing the caller's state
STATUS = 0x3F if kfp.ARCH == "x86_64" else 0


def settings():
    """The calling thread's floating-point control bits (flags left out)."""
    return _fpenv.control() & ~STATUS


def _clear_flush():
    _fpenv.set_control(_fpenv.control() & ~_fpenv.FLUSH_BITS)


@pytest.fixture(autouse=True)
def _caller_does_not_flush():
    """Each test starts in a thread that does not flush (as Python starts);
    its state is put back after."""
    before = _fpenv.control()
    _clear_flush()
    yield
    _fpenv.set_control(before)


# ------------------------------------------------------------ the register
def test_architecture_is_chosen_from_the_triple():
    assert kfp.machine_arch("x86_64-unknown-linux-gnu") == "x86_64"
    assert kfp.machine_arch("aarch64-unknown-linux-gnu") == "aarch64"
    assert kfp.machine_arch("arm64-apple-darwin23.0.0") == "aarch64"
    assert kfp.machine_arch("powerpc64le-unknown-linux-gnu") is None
    assert kfp.machine_arch("riscv64-unknown-linux-gnu") is None
    bits = {"x86_64": (1 << 15) | (1 << 6), "aarch64": 1 << 24, None: 0}
    assert kfp.FLUSH_BITS == bits[kfp.ARCH]
    assert _fpenv.AVAILABLE == (kfp.ARCH is not None)


@pytest.mark.parametrize("arch,read,write", [
    ("x86_64", "stmxcsr", "ldmxcsr"),
    ("aarch64", "mrs\tx0, FPCR", "msr\tFPCR"),
])
def test_intrinsics_compile_for_each_architecture(arch, read, write):
    """The IR of both paths is valid for LLVM (intrinsic names and signatures:
    a wrong one fails verification) and compiles to the register accesses,
    whatever the machine running the test."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    triple = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}[arch]
    llvm.initialize_all_targets()  # numba registers only the host's
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as exc:  # pragma: no cover - llvmlite built without that target
        pytest.skip(f"llvmlite has no {arch} target: {exc}")
    module = ir.Module(name="fpenv_" + arch)
    module.triple = triple
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, []), name="enter")
    builder = ir.IRBuilder(fn.append_basic_block())
    old = kfp.emit_read(builder, arch)
    kfp.emit_write(builder, arch, builder.or_(old, ir.Constant(i64, kfp.FLUSH_BITS or 1)))
    builder.ret(old)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    asm = target.create_target_machine(opt=2).emit_assembly(parsed)
    assert read in asm and write in asm, asm


@needs_ftz
def test_enter_and_leave_touch_only_the_flush_bits():
    base = _fpenv.control()
    assert not _fpenv.flushing()
    old = kfp.enter_flush()
    assert old == base and _fpenv.flushing()
    assert (_fpenv.control() & ~STATUS) == ((base | _fpenv.FLUSH_BITS) & ~STATUS)
    kfp.leave_flush(old)
    assert settings() == base & ~STATUS
    if kfp.ARCH == "x86_64":  # the caller's DAZ alone survives (FTZ goes)
        _fpenv.set_control(base | (1 << 6))
        kfp.leave_flush(kfp.enter_flush())
        assert settings() == (base | (1 << 6)) & ~STATUS
