"""Where a prompt step's host time goes (GPU, 0.6B dummy): ~100 decoding rows, then 12 prompts of
~680 tokens arrive (an offline prompt step's shape). Reports wall per step, a cProfile of the
launching step, and the first device sync inside a prompt step (sync debug mode 'error')."""
import cProfile, io, pstats, sys, time, traceback
import torch
from ember import LLM, SamplingParams

llm = LLM(sys.argv[1], load_format="dummy", max_num_seqs=256, max_model_len=4096, progress=False)
eng = llm.engine
ps = SamplingParams(temperature=0.6, max_tokens=3000, ignore_eos=True, seed=1)
seqs = [eng.add_request([1000 + (37 * i + j) % 90000 for j in range(400 + 3 * i)], ps) for i in range(100)]
for _ in range(30):
    eng.step()
torch.cuda.synchronize()

def add_prompts(k):
    for i in range(12):
        eng.add_request([5000 + (53 * (i + 100 * k) + j) % 90000 for j in range(680)], ps)

def timed_steps(n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); eng.step(); out.append(1000 * (time.perf_counter() - t))
    return out

print("decode steps ms:", [round(x, 2) for x in timed_steps(5)])
add_prompts(0)
print("prompt step + after ms:", [round(x, 2) for x in timed_steps(4)])
add_prompts(1)
prof = cProfile.Profile()
prof.enable(); t = time.perf_counter(); eng.step(); eng.step(); dt = time.perf_counter() - t; prof.disable()
print(f"two steps around a prompt step, profiled: {1000 * dt:.1f} ms")
s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue()[:9000])
s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30); print(s.getvalue()[:6000])
for _ in range(3):
    eng.step()
torch.cuda.synchronize()
add_prompts(2)
torch.cuda.set_sync_debug_mode("error")
try:
    eng.step(); eng.step()
    print("no sync in a prompt step")
except Exception:
    traceback.print_exc(limit=25)
finally:
    torch.cuda.set_sync_debug_mode(0)
