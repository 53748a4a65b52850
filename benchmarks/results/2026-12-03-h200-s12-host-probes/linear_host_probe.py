"""Host time per F.linear call (bf16, Qwen3-0.6B projection shapes) with the same M every call
and with a new M every call, under cuBLAS and cuBLASLt; and the host time of use_triton."""
import time, torch, torch.nn.functional as F
from ember.ops.dispatch import use_triton, pdl_enabled
dev = "cuda"
W = {n: torch.randn(n, k, device=dev, dtype=torch.bfloat16) for n, k in [(4096, 1024), (6144, 1024), (1024, 3072)]}
X = torch.randn(9000, 3072, device=dev, dtype=torch.bfloat16)

def host_us(fn, n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return 1e6 * dt / n

for lib in ("cublas", "cublaslt"):
    torch.backends.cuda.preferred_blas_library(lib)
    for (n, k), w in [((n, w.shape[1]), w) for n, w in W.items()]:
        for base in (128, 8000):
            x0 = X[:base, :k]
            F.linear(x0, w)
            same = host_us(lambda i: F.linear(x0, w), 50)
            new = host_us(lambda i: F.linear(X[: base + 1 + i, :k], w), 50)
            again = host_us(lambda i: F.linear(X[: base + 1 + i, :k], w), 50)
            print(f"{lib:8s} N={n:5d} K={k:4d} M~{base:5d}: same M {same:6.1f} us, new M {new:6.1f} us, those M again {again:6.1f} us per call", flush=True)
x = X[:4, :4]
print(f"use_triton {host_us(lambda i: use_triton(x), 2000):.2f} us, pdl_enabled {host_us(lambda i: pdl_enabled(x.device), 2000):.2f} us per call")
