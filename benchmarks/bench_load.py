"""Peak memory of `GPT.from_pretrained` on a Hugging Face GPT-2 directory, against the weights' own bytes.

Writes a GPT-2 with random weights (124M parameters by default: 12 layers, 768 wide, vocab 50257,
1024 positions) as a Hugging Face directory (config.json + model.safetensors, keys with the
`transformer.` prefix, as transformers writes them), then loads it in a fresh subprocess and reports
that process's peak resident memory (VmHWM; ru_maxrss where /proc is absent) over the file's weight
bytes: with the interpreter and imports counted, and above what the process held after its imports.
The plain way (random init, whole file read, then copied in) is measured beside it for contrast.

    python benchmarks/bench_load.py                 # GPT-2 124M (a 498 MB file in a temp directory)
    python benchmarks/bench_load.py --tiny          # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_gpt.model import GPTConfig  # noqa: E402
from tinygrad_gpt.pretrained import _write_safetensors, hf_config_from_gpt  # noqa: E402

# NOTE: the peak is VmHWM of /proc/self/status where it exists: Linux's ru_maxrss survives fork + exec,
# so a child's ru_maxrss starts at its parent's (here the writer's, which held all the weights)
CHILD = """
import json, resource, sys, time
from tinygrad_gpt.model import GPT

def peak_rss():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

after_imports = peak_rss()
start = time.perf_counter()
if sys.argv[2] == "from_pretrained":
    model = GPT.from_pretrained(sys.argv[1])
else:  # the plain way, for contrast: random init, then the whole file read, then copied in
    from tinygrad_gpt import safetensors
    from tinygrad_gpt.pretrained import gpt_config_from_hf
    config = gpt_config_from_hf(json.load(open(sys.argv[1] + "/config.json")), "config.json")
    model = GPT(config)
    state = safetensors.load_file(sys.argv[1] + "/model.safetensors")
    model.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()})
seconds = time.perf_counter() - start
peak = peak_rss()
print(json.dumps({"after_imports": after_imports, "peak": peak, "seconds": seconds,
                  "params": model.num_parameters()}))
"""


def hf_shapes(config: GPTConfig) -> dict:
    """Hugging Face GPT-2 key -> shape for a config (tied head, so no lm_head.weight)."""
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C), "wpe.weight": (config.block_size, C)}
    for i in range(config.n_layer):
        for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("attn.c_attn.weight", (C, 3 * C)),
                            ("attn.c_attn.bias", (3 * C,)), ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("ln_2.weight", (C,)), ("ln_2.bias", (C,)), ("mlp.c_fc.weight", (C, 4 * C)),
                            ("mlp.c_fc.bias", (4 * C,)), ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))]:
            shapes[f"h.{i}.{name}"] = shape
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def write_random_gpt2(path: Path, config: GPTConfig, seed: int = 0) -> int:
    """Write a random GPT-2 directory; returns the weights' bytes."""
    rng = np.random.default_rng(seed)
    shapes = hf_shapes(config)
    tensors = {"transformer." + k: rng.standard_normal(s, dtype=np.float32) * 0.02 for k, s in shapes.items()}
    path.mkdir(parents=True, exist_ok=True)
    _write_safetensors(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps(hf_config_from_gpt(config)), encoding="utf-8")
    return sum(t.nbytes for t in tensors.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model with vocab 1000 (for CI)")
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--dir", default=None, help="write the model here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.tiny:
        config = GPTConfig(vocab_size=1000, block_size=64, n_layer=2, n_head=2, n_embd=64)
    else:
        config = GPTConfig.from_preset("gpt2", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "gpt2-random"
        weight_bytes = write_random_gpt2(path, config)
        results = {}
        for way in ("from_pretrained", "GPT(config) + load_state_dict(load_file)"):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(path), way], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return 1
            results[way] = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    n_params = results["from_pretrained"]["params"]
    print(f"Loading a Hugging Face GPT-2 directory: {n_params:,} parameters, {weight_bytes / mib:.1f} MiB of "
          "float32 weights\n")
    print("| way | load (s) | RSS after imports (MiB) | peak RSS (MiB) | peak / weights "
          "| (peak - after imports) / weights |")
    print("|---|---|---|---|---|---|")
    for way, r in results.items():
        print(f"| {way} | {r['seconds']:.2f} | {r['after_imports'] / mib:.1f} | {r['peak'] / mib:.1f} | "
              f"{r['peak'] / weight_bytes:.2f} | {(r['peak'] - r['after_imports']) / weight_bytes:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
