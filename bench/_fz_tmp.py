import numpy as np, sys
from bench.compare import time_alternating
from fastseq import _plan
from fastseq.nn import Recurrent
nj=int(sys.argv[1])
real = Recurrent._fused_parts
shapes=[(B,T,64,H) for B in (4,8,16) for H in (32,64,128,256) for T in (32,)]+[(4,128,64,64),(8,128,64,64),(16,128,64,64)]
if len(sys.argv)>2: shapes=[tuple(map(int,s.split(','))) for s in sys.argv[2:]]
for B,T,F,H in shapes:
    X = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    layer = Recurrent("lstm", F, H, random_state=0, n_jobs=nj).eval()
    layer.forward(X, need_grad=False)
    got = {k[:3]:v[:3] for k,v in layer._plans.items()}
    parts = real(layer, B, T)
    def way(fp):
        def call():
            Recurrent._fused_parts = lambda self, B, T: fp
            layer.__dict__.pop("_plans", None)
            layer.forward(X, need_grad=False)
        return call
    if parts[0]==0: parts=(1,False)
    t = time_alternating({"fused": way(parts), "separate": way((0, False))}, 7)
    Recurrent._fused_parts = real
    print(f"nj{nj} B{B} T{T} H{H}: planner {list(got.values())[0][:2]} fused {t['fused']*1e6:8.1f} us separate {t['separate']*1e6:8.1f} us  sep/fused {t['separate']/t['fused']:.2f}", flush=True)
