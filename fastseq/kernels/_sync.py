"""A per-step barrier between threads running parts of one time loop.

Threads that split the *hidden units* of a layer (not the batch) must see
each other's ``h_t`` before step ``t + 1``.  Each thread publishes the number
of steps it has finished in its own slot of an int64 ``flags`` array (slots a
cache line apart) with a release store, and waits for every other slot with
acquire loads: what a thread wrote before its release store is visible to a
thread whose acquire load saw the value.  Numba has no atomics, so the two
accesses are LLVM intrinsics (a plain load could be hoisted out of the wait
loop).  A waiting thread spins :data:`SPIN_LIMIT` times, then calls
``sched_yield`` between polls, so that an oversubscribed machine still makes
progress.  A barrier costs about 70 ns between two cores here.

The same atomics (and a compare-and-swap) carry the hand-over of the thread
pool (:mod:`fastseq._threads`): :func:`linger` and :func:`claim` move a pool
thread's state between idle, lingering and claimed, and :func:`spin_until`
is a caller's wait for a part's done flag.
"""

import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT
from ._fpenv import ARCH, enter_flush, leave_flush
from ._native import call_at

#: whether the barrier can be built here (it calls libc's ``sched_yield``,
#: which Windows lacks; there the layers never split by unit)
AVAILABLE = sys.platform != "win32"

#: int64 slots between two threads' flags (64 bytes: one cache line each)
STRIDE = 8
#: polls before a waiting thread starts yielding its core
SPIN_LIMIT = 4000


def _item_pointer(context, builder, aty, arr, idx):
    a = context.make_array(aty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aty, a, [idx], wraparound=False)


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` (int64 array) as an acquire load."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """``arr[idx] = val`` (int64 array) as a release store."""
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(val, ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, new):
    """Atomically ``arr[idx] = new`` if it holds ``expected`` (int64 array,
    sequentially consistent); returns the value it held."""
    sig = types.int64(arr, idx, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        exp = context.cast(builder, args[2], signature.args[2], types.int64)
        val = context.cast(builder, args[3], signature.args[3], types.int64)
        pair = builder.cmpxchg(ptr, exp, val, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """libc's ``sched_yield()``: give the core to another runnable thread."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


#: the LLVM intrinsic a polling loop calls at each poll: x86's ``pause``
#: and arm64's ``yield`` (hint 1) tell the core that the thread spins (a
#: sibling hardware thread gets the core's resources meanwhile), as OpenMP
#: runtimes' spin loops do; nothing elsewhere
RELAX = {"x86_64": ("llvm.x86.sse2.pause", ()), "aarch64": ("llvm.aarch64.hint", (1,))}.get(ARCH)


@intrinsic
def relax(typingctx):
    """:data:`RELAX` (a hint; nothing where there is none)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if RELAX is not None:
            name, imms = RELAX
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i32] * len(imms)),
                                                name)
            builder.call(fn, [ir.Constant(i32, v) for v in imms])
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always", **JIT)
def wait_at(flags, idx, value):
    """Wait until ``flags[idx] >= value`` (acquire): spin
    :data:`SPIN_LIMIT` polls, then yield between polls."""
    spins = 0
    while load_acquire(flags, idx) < value:
        spins += 1
        if spins >= SPIN_LIMIT:
            sched_yield()
            spins = 0


@njit(inline="always", **JIT)
def wait_for(flags, slot, value):
    """Wait until ``flags[slot * STRIDE] >= value``: :func:`wait_at` on
    ``slot``'s line."""
    wait_at(flags, slot * STRIDE, value)


@njit(inline="always", **JIT)
def barrier(flags, tid, value):
    """Publish that thread ``tid`` finished step ``value`` and wait until every
    thread (``flags.shape[0] // STRIDE`` of them) has."""
    store_release(flags, tid * STRIDE, value)
    for k in range(flags.shape[0] // STRIDE):
        if k != tid:
            wait_for(flags, k, value)


@njit(**JIT)
def spin_until(flags, slot, value, spins):
    """Poll ``flags[slot] >= value`` (acquire) up to ``spins`` times, the GIL
    released; True as soon as it holds, False when the polls ran out.  A
    caller waits for its pool parts (:mod:`fastseq._threads`) with it rather
    than sleep at once: waking a sleeping thread costs 50-150 us on a virtual
    machine, more than a small part of a split call takes."""
    for _ in range(spins):
        if load_acquire(flags, slot) >= value:
            return True
    return False


#: step count that releases every barrier (a part that raised sets it)
RELEASE_ALL = 2 ** 62
#: element of each part's line of a unit split's ``flags`` that its kernel
#: sets as it starts (:func:`signal_started`, :func:`wait_started`)
STARTED = 2


@njit(inline="always", **JIT)
def signal_started(flags, tid):
    """Part ``tid`` of a unit split has entered its compiled code (and so
    released the GIL)."""
    store_release(flags, tid * STRIDE + STARTED, 1)


@njit(**JIT)
def wait_started(flags):
    """The calling thread of a unit split waits, without the GIL, until
    every other part has entered its compiled code (or given up:
    :data:`RELEASE_ALL`): a pool thread then never finds the GIL taken by
    the caller's own start (it would sleep until the GIL is released, and
    waking it costs what waking a sleeping pool thread does), and the
    caller takes it back from no one.  Spins, then yields, as
    :func:`wait_for`."""
    for k in range(1, flags.shape[0] // STRIDE):
        spins = 0
        while (load_acquire(flags, k * STRIDE + STARTED) == 0
               and load_acquire(flags, k * STRIDE) < RELEASE_ALL):
            spins += 1
            if spins >= SPIN_LIMIT:
                sched_yield()
                spins = 0


#: element of a unit split's ``flags`` (in the calling thread's own line,
#: beside its step count) that the caller sets once it waits for the parts
#: (:func:`signal_then_spin`); a pool thread's part waits for it before it
#: returns (:func:`wait_joined`)
JOINED = 1


#: element of the calling thread's line of a split call's ``flags`` that a
#: compiled part sets when it raised (:func:`part_failed`); the caller
#: raises in Python once the parts are done
FAILED = 3


@njit(inline="always", **JIT)
def part_failed(flags, tid):
    """Part ``tid`` of a split call raised inside a compiled task (where no
    exception reaches Python: an allocation that failed): mark the call
    failed, mark this part started and release every barrier, so that the
    other parts finish (their results are discarded) and no thread waits
    for this one."""
    store_release(flags, FAILED, 1)
    store_release(flags, tid * STRIDE + STARTED, 1)
    store_release(flags, tid * STRIDE, RELEASE_ALL)


@njit(inline="always", **JIT)
def wait_joined(flags):
    """Wait until the calling thread of a unit split has set
    ``flags[JOINED]``: it then waits for this part without the GIL, so this
    thread, back in Python, takes the GIL without sleeping on it (and the
    caller takes it back without sleeping either).  :func:`wait_at`."""
    wait_at(flags, JOINED, 1)


@njit(**JIT)
def signal_then_spin(flags, done, slot, value, spins):
    """``flags[JOINED] = 1`` (release), then :func:`spin_until` on
    ``done``: one compiled call, so that the parts released by the signal
    find the GIL free (the caller holds it at no moment in between)."""
    store_release(flags, JOINED, 1)
    return spin_until(done, slot, value, spins)


@njit(**JIT)
def publish(flags, slot, value):
    """``flags[slot] = value`` as a release store, from Python: what the
    publishing thread wrote before is visible to a thread that sees it."""
    store_release(flags, slot, value)


#: states of a pool thread (:func:`linger`, :mod:`fastseq._threads`):
#: running or asleep, polling for a claim, being handed a task, handed one
IDLE, LINGER, CLAIMING, CLAIMED = 0, 1, 3, 2
#: slot of ``state`` set when a task was put in the thread's queue
QUEUED = 1
#: slots of ``state`` for a compiled task (:func:`split_native`): its kind
#: (:data:`NATIVE`; 0 for a task in Python), the claimer's ticket, and the
#: ticket of the last compiled task done
KIND, TICKET, NDONE = 2, 3, 4
#: :data:`KIND` of a compiled task: the function at ``desc[0]`` (a
#: ``numba.cfunc`` of signature ``void(int64)``) called with ``desc``'s address
NATIVE = 1
#: int64 slots of a compiled task's description (:func:`split_native`):
#: ``desc[0]`` the function, then :data:`DESC_TID`, :data:`DESC_J0` and
#: :data:`DESC_J1` (the part's range), the rest the task's own
#: (:mod:`fastseq.kernels.infer_native`)
DESC_LEN = 64
DESC_TID, DESC_J0, DESC_J1 = 1, 2, 3


@njit(**JIT)
def linger(state, done, slot, spins, settle, desc):
    """A pool thread's end of a task: mark itself lingering in ``state[0]``,
    publish ``done[slot] = 1`` (release), then poll up to ``spins`` times,
    the GIL released, for a caller to hand it a task (:func:`claim`, then
    ``state`` :data:`CLAIMED`), then ``settle`` polls more (for the caller
    to release the GIL).  True when handed one; False when it went
    :data:`IDLE` instead, at the end of its polls or at once when another
    caller queued a task (``state[QUEUED]``): it then takes its next task
    from its queue.
    Marking and publishing in one call leaves the caller, who returns as soon
    as it sees ``done``, no moment in which this thread holds the GIL.

    A compiled task (:func:`split_native`: ``state[KIND]`` :data:`NATIVE`,
    described in ``desc``) runs here, denormals flushed, without returning
    to Python; the thread then publishes its ticket in ``state[NDONE]`` and
    lingers again."""
    store_release(state, 0, LINGER)
    store_release(done, slot, 1)
    while True:
        claimed = False
        for _ in range(spins):
            if load_acquire(state, 0) == CLAIMED:
                claimed = True
                break
            if load_acquire(state, QUEUED) != 0:  # a task waits in its queue (another caller's)
                break
            relax()
        if not claimed:
            if compare_exchange(state, 0, LINGER, IDLE) == LINGER:
                return False
            while load_acquire(state, 0) != CLAIMED:  # claimed as it gave up: the task comes
                pass
        if load_acquire(state, KIND) != NATIVE:
            break
        store_release(state, KIND, 0)
        saved = enter_flush()
        call_at(desc[0], desc.ctypes.data)
        leave_flush(saved)
        ticket = load_acquire(state, TICKET)
        store_release(state, 0, LINGER)     # claimable again before the caller goes on
        store_release(state, NDONE, ticket)
    for _ in range(settle):
        if load_acquire(state, QUEUED) < 0:  # never: polls that LLVM keeps
            break
    return True


@njit(**JIT)
def claim(state):
    """A caller's claim of a lingering pool thread (``state[0]`` from
    :data:`LINGER` to :data:`CLAIMING`: the caller then stores the task and
    sets :data:`CLAIMED`); False when the thread is not lingering (running,
    or idle: hand it the task by its queue)."""
    return compare_exchange(state, 0, LINGER, CLAIMING) == LINGER


@njit(inline="always", **JIT)
def _publish_task(state):
    """Hand a claimed thread (:func:`claim`) the compiled task now in its
    description: a new ticket, :data:`KIND` :data:`NATIVE`, then
    :data:`CLAIMED` (release stores: the description is visible first)."""
    state[TICKET] += 1
    store_release(state, KIND, NATIVE)
    store_release(state, 0, CLAIMED)


@njit(**JIT)
def wait_done(state):
    """Wait until the compiled task last handed to the thread of ``state``
    is done."""
    wait_at(state, NDONE, state[TICKET])   # (tickets only grow)


@njit(**JIT)
def split_native(states, descs, own, bounds, flags):
    """Run a call's parts as compiled tasks, without Python on either
    side: part ``k`` (its range ``bounds[k, 0]..bounds[k, 1]``: hidden
    units of a unit split, sequences of a batch split) on lingering pool
    thread ``k - 1`` (``states[k - 1]``, its description ``descs[k -
    1]``), part 0 on the calling thread; ``own`` describes the call
    (:data:`DESC_LEN`), each part's copy then gets its ``tid`` and range.
    The calling thread sets ``flags[JOINED]`` after its own part (a unit
    split's pool part waits for it: :func:`wait_joined`) and waits for
    every part.  False, with nothing run and nothing written, when a pool
    thread is not lingering (then hand the parts over in Python)."""
    n = bounds.shape[0]
    for w in range(n - 1):
        if not claim(states[w]):
            for v in range(w):
                store_release(states[v], 0, LINGER)
            return False
    for w in range(n - 1):
        d = descs[w]
        d[:] = own
        d[DESC_TID] = w + 1
        d[DESC_J0] = bounds[w + 1, 0]
        d[DESC_J1] = bounds[w + 1, 1]
        _publish_task(states[w])
    own[DESC_TID] = 0
    own[DESC_J0] = bounds[0, 0]
    own[DESC_J1] = bounds[0, 1]
    call_at(own[0], own.ctypes.data)
    store_release(flags, JOINED, 1)
    for w in range(n - 1):
        wait_done(states[w])
    return True


@njit(**JIT)
def hand_native(states, descs, own):
    """Hand the compiled task described in ``own`` to lingering pool thread
    0 (``states[0]``, ``descs[0]``) without waiting for it (then
    :func:`wait_done` of ``states[0]``); False, with nothing handed, when it is not
    lingering."""
    if not claim(states[0]):
        return False
    descs[0][:] = own
    _publish_task(states[0])
    return True

