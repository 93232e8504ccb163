#!/usr/bin/env bash
# The prepared GPU check (issue 18): one command, run from the repository root on a CUDA machine as it is.
#
#   benchmarks/gpu_check.sh [--smoke] [REPORT_DIR]        # REPORT_DIR: default $OUT, else ./gpu_check_report
#   TINYGRAD_GPT_TEST_FAKE_CUPY=1 benchmarks/gpu_check.sh --smoke /tmp/report   # CI: the CPU stand-in
#
# Sections, each under its own time cap, all inside an 8-minute budget (GPU_CHECK_BUDGET_S, default 465 s; a section
# that no longer fits is not started and reported TIMEOUT):
#   kernels       tests/test_gpu_kernels.py and tests/test_cupy_parity.py, verbose (kernels.log, kernels.xml)
#   train-float16 a short training run with --dtype float16 on the GPU              (train.log)
#   train-tf32    the same with --tf32                                               (train.log)
#   resume        --init_from resume of the float16 run, 10 more iterations          (train.log)
#   sample-cpu    sampling that GPU checkpoint with TINYGRAD_GPT_BACKEND=numpy       (train.log)
#   train-mpi     mpiexec -n 1, --gradient_accumulation_steps 2 --zero 1: NCCL's reduce-scatter and allgather on the
#                 GPU through CuPy (skipped where mpi4py or mpiexec is missing)   (train.log)
#   bench-gpt2    bench_train.py --backend cupy --tf32 on gpt2 (124M, block 1024), beside torch on cuda (bench.log)
#   bench-medium  the same on the medium config                                      (bench.log)
#   suite         TINYGRAD_GPT_BACKEND=cupy pytest -q -x over the whole suite, in the time left (suite.log, suite.xml)
# REPORT_DIR/summary.txt holds one line per section, "pass", "FAIL", "TIMEOUT" or "skip" (with the reason),
# its seconds, and the benchmark tables (tokens/s, ms/step, peak GPU memory, ratio tinygrad_gpt / torch).
# A failing section does not stop the others; the exit status is 1 when any section failed or timed out.
#
# --smoke (implied by TINYGRAD_GPT_TEST_FAKE_CUPY=1, tests/fake_cupy.py's CPU stand-in for CuPy): tiny sizes, and
# the suite section runs tests/test_backend.py and tests/test_model.py only (CI runs the whole suite on the
# stand-in separately). On the stand-in, what needs a real GPU is skipped with its reason: the CUDA kernel tests
# (pytest's skip reasons in kernels.log) and torch on cuda in the benchmarks. Nothing is installed; the
# package is imported from the checkout (PYTHONPATH=.).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

smoke=0
report=""
for arg in "$@"; do
    case $arg in
        --smoke) smoke=1 ;;
        -*) echo "gpu_check.sh: unknown option $arg (usage: benchmarks/gpu_check.sh [--smoke] [REPORT_DIR])" >&2
            exit 2 ;;
        *) report=$arg ;;
    esac
done
report=${report:-${OUT:-gpu_check_report}}
fake=0
if [[ ${TINYGRAD_GPT_TEST_FAKE_CUPY:-} == 1 ]]; then
    fake=1
    smoke=1
fi
mkdir -p "$report" || exit 2
report=$(cd "$report" && pwd)
work=$(mktemp -d)  # training data and checkpoints: scratch, not part of the report
trap 'rm -rf "$work"' EXIT
summary=$report/summary.txt
rm -f "$summary" "$report"/{suite,kernels,train,bench}.{log,xml}

PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ((fake)); then  # every Python process (also those the CLIs and benchmarks start) gets the stand-in
    export PYTHONPATH="$root/tests/fake_cupy_site:$root/tests:$PYTHONPATH"
    export TINYGRAD_GPT_GPU_KERNELS=0  # the stand-in runs no CUDA
fi

BUDGET_S=${GPU_CHECK_BUDGET_S:-465}  # the whole script stays within 8 minutes
start=$SECONDS
failed=0

record() {  # status section seconds note
    printf '%-7s %-14s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$summary"
}

run_section() {  # name cap_s log_file command...: run it under a time cap, record its status
    local name=$1 cap=$2 log=$3 rc=0
    shift 3
    local left=$((BUDGET_S - (SECONDS - start)))
    if ((left < 15)); then  # not run counts as not passed: the check is incomplete
        record TIMEOUT "$name" 0 "not started: the ${BUDGET_S} s budget is spent"
        failed=1
        return 1
    fi
    ((cap > left)) && cap=$left
    printf '\n===== %s (cap %s s): %s\n' "$name" "$cap" "$*" >>"$log"
    local t0=$SECONDS
    timeout -s INT -k 15 "$cap" "$@" >>"$log" 2>&1 || rc=$?  # INT: Python stops as on Ctrl-C, reports
    local dt=$((SECONDS - t0))
    case $rc in
        0) record pass "$name" "$dt" "$(basename "$log")" ;;
        124 | 137) record TIMEOUT "$name" "$dt" "killed after the ${cap} s cap; see $(basename "$log")" ;;
        *) record FAIL "$name" "$dt" "exit $rc; see $(basename "$log")" ;;
    esac
    ((rc == 0)) || failed=1
    return $rc
}

# ---------------------------------------------------------------- the machine

{
    echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -n), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "# mode: $( ((fake)) && echo 'CPU stand-in (TINYGRAD_GPT_TEST_FAKE_CUPY=1), smoke sizes' || { ((smoke)) && echo 'GPU, smoke sizes' || echo 'GPU'; })"
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/# gpu: /'
    "$PYTHON" - <<'EOF' 2>&1 | sed 's/^/# /'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "numba"):
    try:
        module = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f", cuda {'available: ' + module.cuda.get_device_name() if module.cuda.is_available() else 'not available'}"
        print(name, getattr(module, "__version__", "?") + extra)
    except Exception as e:  # report, do not fail: the sections say what broke
        print(name, "not importable:", type(e).__name__, e)
EOF
    echo "# status  section   seconds  note"
} >"$summary"
cat "$summary"

torch_cuda=0
if ((!fake)) && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    torch_cuda=1
fi

# ---------------------------------------------------------------- a. the CUDA kernels and CuPy parity tests, verbose

run_section kernels 60 "$report/kernels.log" env TINYGRAD_GPT_BACKEND=cupy "$PYTHON" -m pytest -v -rs \
    -p no:cacheprovider --junitxml="$report/kernels.xml" tests/test_gpu_kernels.py tests/test_cupy_parity.py
if ((fake)); then
    record skip kernels-cuda 0 "the stand-in runs no CUDA: the CUDA kernel tests skip (reasons in kernels.log)"
fi

# ---------------------------------------------------------------- b. training on the GPU, sampling on the CPU

cat README.md docs/*.md >"$work/text.txt"  # ~60 kB of English and code, in the checkout
if ((smoke)); then
    iters=20
    model=(--n_layer 2 --n_head 2 --n_embd 32 --block_size 32 --batch_size 4 --max_iters $iters --eval_interval 10)
else
    iters=100
    model=(--n_layer 4 --n_head 4 --n_embd 128 --block_size 128 --batch_size 16 --max_iters $iters --eval_interval 50)
fi
train=(env TINYGRAD_GPT_BACKEND=cupy "$PYTHON" -m tinygrad_gpt.train --data "$work/text.txt" --eval_iters 4
    --plot false --max_new_tokens 40)
if run_section train-float16 60 "$report/train.log" "${train[@]}" "${model[@]}" --out_dir "$work/f16" --dtype float16; then
    if run_section resume 40 "$report/train.log" "${train[@]}" --out_dir "$work/f16" --init_from resume \
        --max_iters $((iters + 10)); then
        run_section sample-cpu 40 "$report/train.log" env TINYGRAD_GPT_BACKEND=numpy "$PYTHON" -m tinygrad_gpt.sample \
            --out_dir "$work/f16" --checkpoint latest --prompt "The " --max_new_tokens 80
    else
        record skip sample-cpu 0 "needs the resumed checkpoint"
    fi
else
    record skip resume 0 "needs the float16 run's checkpoint"
    record skip sample-cpu 0 "needs the float16 run's checkpoint"
fi
run_section train-tf32 60 "$report/train.log" "${train[@]}" "${model[@]}" --out_dir "$work/tf32" --tf32
if command -v mpiexec >/dev/null && "$PYTHON" -c "import mpi4py" 2>/dev/null; then
    run_section train-mpi 60 "$report/train.log" mpiexec -n 1 "${train[@]}" "${model[@]}" --out_dir "$work/mpi" \
        --gradient_accumulation_steps 2 --zero 1
else
    record skip train-mpi 0 "mpi4py or mpiexec is missing (pip install -e '.[mpi]')"
fi

# ---------------------------------------------------------------- c. training speed beside PyTorch on the same GPU

frameworks=tinygrad,torch
if ((!torch_cuda)); then
    frameworks=tinygrad
    reason=$( ((fake)) && echo "the stand-in has no CUDA device" || echo "torch.cuda.is_available() is False")
    record skip torch-cuda 0 "the benchmarks run tinygrad_gpt alone: $reason"
fi
bench_section() {  # name cap config timing/size flags...
    local name=$1 cap=$2 config=$3
    shift 3
    local log=$report/bench.log before
    touch "$log"
    before=$(wc -l <"$log")
    run_section "$name" "$cap" "$log" "$PYTHON" benchmarks/bench_train.py --backend cupy --tf32 --config "$config" \
        --frameworks "$frameworks" "$@"
    tail -n +"$((before + 1))" "$log" | grep -E '^\||^Median step time ratio' | sed 's/^/        /' >>"$summary"
}
if ((smoke)); then
    tiny=(--n_layer 1 --n_head 2 --n_embd 32 --block_size 32 --batch_size 2 --vocab_size 65 --sgemm_size 64)
    bench_section bench-gpt2 60 gpt2 --steps 1 --blocks 1 --warmup 1 "${tiny[@]}"
    bench_section bench-medium 60 medium --steps 1 --blocks 1 --warmup 1 "${tiny[@]}"
else
    bench_section bench-gpt2 130 gpt2 --steps 5 --blocks 3 --warmup 2
    bench_section bench-medium 60 medium --steps 10 --blocks 3 --warmup 3
fi

# ---------------------------------------------------------------- a. the whole suite on the GPU, with the time left
# Last, because its length on a GPU is the one unknown: the bounded sections above cannot be starved by it.
# On the cap it gets SIGINT, so pytest still writes its log summary and junit xml for the tests that ran.

if ((smoke)); then
    suite_tests=(tests/test_backend.py tests/test_model.py)
else
    suite_tests=()
fi
run_section suite "$BUDGET_S" "$report/suite.log" env TINYGRAD_GPT_BACKEND=cupy "$PYTHON" -m pytest -q -x -rs \
    -p no:cacheprovider --durations=10 --junitxml="$report/suite.xml" ${suite_tests[@]+"${suite_tests[@]}"}

echo "# total $((SECONDS - start)) s; $( ((failed)) && echo 'SOME SECTIONS FAILED' || echo 'every section that ran passed')" |
    tee -a "$summary"
exit "$failed"
