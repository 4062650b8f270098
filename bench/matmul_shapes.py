"""Microbenchmark of the default model's projection shapes: F.linear vs a pre-transposed weight vs
oneDNN's packed weight, fp32, 1 and 32 rows. `python -m bench.matmul_shapes` (median of 5x40 calls).
"""
import torch, time, statistics
import torch.utils.mkldnn as mk
torch.manual_seed(0)
def tm(f, n):
    t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e6
for M in [1, 32]:
    for (N,K) in [(49152,576),(3072,576),(960,576),(576,1536),(576,576)]:
        x=torch.randn(M,K); lin=torch.nn.Linear(K,N,bias=False); w=lin.weight.detach()
        ml=mk.to_mkldnn(torch.nn.Sequential(lin))[0]
        wt=w.t().contiguous()
        fs={'linear':lambda: torch.nn.functional.linear(x,w),
            'mkldnn':lambda: ml(x),
            'mm_t':lambda: torch.mm(x,wt)}
        res={k:[] for k in fs}
        n = 4 if N>40000 else 40
        for f in fs.values(): f()
        for _ in range(5):
            for k,f in fs.items(): res[k].append(tm(f,n))
        gf=2*M*N*K/1e3
        print(M,N,K,' '.join('%s %.0fus(%.0fGF)'%(k,statistics.median(v),gf/statistics.median(v)) for k,v in res.items()), flush=True)
