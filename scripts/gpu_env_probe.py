"""Environment probe for the GPU box: versions, FA3 provider call contract, bf16 vs fp8 kernel speed."""
import inspect
import torch
import triton
import triton.testing

print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(),
      torch.cuda.get_device_properties(0).multi_processor_count, "SMs")
try:
    import fa3_fwd_interface as fa3
except ImportError as e:
    print("no fa3:", e)
    raise SystemExit(0)
print("fa3:", inspect.signature(fa3.flash_attn_func))
B, H, D = 1, 32, 128
for S in (4096, 16384):
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = fa3.flash_attn_func(q, k, v, causal=False)
    print("bf16 return type:", type(out), [getattr(o, "shape", o) for o in (out if isinstance(out, tuple) else [out])])
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
    ds = torch.ones(B, H, device="cuda", dtype=torch.float32)
    out8 = fa3.flash_attn_func(q8, k8, v8, causal=False, q_descale=ds, k_descale=ds, v_descale=ds)
    o8 = out8[0] if isinstance(out8, tuple) else out8
    print("fp8 out dtype", o8.dtype, o8.shape)
    for causal in (False, True):
        f = 4 * B * H * S * S * D / (2 if causal else 1)
        tb = triton.testing.do_bench(lambda: fa3.flash_attn_func(q, k, v, causal=causal), return_mode="median")
        t8 = triton.testing.do_bench(lambda: fa3.flash_attn_func(q8, k8, v8, causal=causal, q_descale=ds,
                                                                 k_descale=ds, v_descale=ds), return_mode="median")
        print(f"S={S} causal={causal}: bf16 {f/tb/1e9:.0f} TFLOP/s, fp8 {f/t8/1e9:.0f} TFLOP/s, ratio {tb/t8:.3f}")
