#!/usr/bin/env bash
# The GPU check (issue #21): what kdbench's GPU paths do on a real GPU, in under 8 minutes on one.
#
#   benchmarks/perf/gpu_check.sh [--device cuda|cpu] [--parts smoke,sweep,ddp,cache,standard] [--keep DIR]
#
# Parts (all by default), each ending in one PASS, FAIL or SKIP line per check:
#   smoke     each task's smoke card with kd on --device (on cuda under bf16 autocast, --set
#             train.amp=bf16): an ok record on that device and precision, naming its GPU
#   sweep     a 2-item local sweep with --gpus-per-run 1 (on cpu: 0): both records ok, on 2+ GPUs
#             each on its own GPU; and the one-line refusals (--device cuda reserving no GPU, more
#             slots × GPUs than are visible)
#   ddp       a 2-rank torchrun run of the smoke card (pskd): NCCL on 2 GPUs, 2 ranks sharing
#             one GPU over gloo on a 1-GPU machine, gloo on cpu
#   cache     the teacher-output cache's size estimate for iwslt14, where kdbench has one
#   standard  2 epochs (the first a warm-up) of the standard detection (coco2017) and pose
#             (coco_wholebody) cards on the COCO fixtures under $KDBENCH_DATA_ROOT/coco-fixtures,
#             printing the last epoch's throughput and the peak GPU memory; on cpu at the sizes
#             tests/detection/test_pipeline.py and tests/pose/test_standard.py use
# --device cpu runs the CPU-only forms (what CI runs, tests/test_gpu_check.py). Needs nothing but the
# repository, its install (PYTHON, default python3, must import kdbench) and the shared data.
# Exit status: 0 when nothing failed, 1 otherwise, 2 on a bad argument.

set -uo pipefail

DEVICE=cuda
PARTS=smoke,sweep,ddp,cache,standard
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:-}; shift 2 || shift ;;
        --parts) PARTS=${2:-}; shift 2 || shift ;;
        --keep) KEEP=${2:-}; shift 2 || shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1'; valid: --device cuda|cpu, --parts LIST, --keep DIR" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device '$DEVICE'; valid: cuda, cpu" >&2; exit 2 ;; esac
for part in ${PARTS//,/ }; do
    case "$part" in smoke|sweep|ddp|cache|standard) ;;
        *) echo "gpu_check.sh: unknown part '$part'; valid: smoke, sweep, ddp, cache, standard" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
KD=("$PY" -m kdbench)
CHECK=("$PY" "$HERE/gpu_check.py")
LIMIT=${GPU_CHECK_TIMEOUT:-300}  # seconds any one command may take (a hung collective fails, not hangs)
if [ -n "$KEEP" ]; then WORK=$KEEP; mkdir -p "$WORK"; else WORK=$(mktemp -d "${TMPDIR:-/tmp}/kdbench-gpu-check.XXXXXX"); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK/logs"
export KDBENCH_CACHE="$WORK/cache"  # its own: every teacher trains here, nothing is read from elsewhere
DATA=${KDBENCH_DATA_ROOT:-}
passed=0; failed=0; skipped=0
started=$SECONDS

pass() { echo "PASS  $1: $2"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP  $1: $2"; skipped=$((skipped + 1)); }
has() { [[ ",$PARTS," == *",$1,"* ]]; }

# run NAME CMD...: CMD with output in logs/NAME.log (its last lines shown on failure); its exit status
run() {
    local name=$1; shift
    timeout "$LIMIT" "$@" >"$WORK/logs/$name.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "      $name exited with $rc$([ $rc -eq 124 ] && echo " (over ${LIMIT} s)"); the end of its log:"
        tail -n 8 "$WORK/logs/$name.log" | sed 's/^/      | /'
    fi
    return $rc
}

# check NAME ARGS...: one gpu_check.py check, its line as PASS or FAIL
check() {
    local name=$1; shift
    local line
    if line=$("${CHECK[@]}" "$@" 2>&1); then pass "$name" "$line"; else fail "$name" "$line"; fi
}

# refused NAME PATTERN CMD...: CMD exits 2 with exactly one stderr line matching PATTERN
refused() {
    local name=$1 pattern=$2; shift 2
    local log="$WORK/logs/${name//\//-}"
    timeout "$LIMIT" "$@" >"$log.out" 2>"$log.err"
    local rc=$? lines line
    lines=$(wc -l <"$log.err")
    line=$(head -n 1 "$log.err")
    if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && [[ "$line" == *"$pattern"* ]]; then
        pass "$name" "refused in one line: $line"
    else
        fail "$name" "expected exit 2 and one line with '$pattern', got exit $rc and $lines lines: $line"
    fi
}

if ! NGPU=$("$PY" -c 'import kdbench, torch; print(torch.cuda.device_count())' 2>"$WORK/logs/import.log"); then
    fail setup "$PY cannot import kdbench and torch: $(tail -n 1 "$WORK/logs/import.log")"
    echo "gpu_check: 0 passed, 1 failed, 0 skipped"
    exit 1
fi
echo "gpu_check: --device $DEVICE, $NGPU GPU(s) visible, parts $PARTS, work in $WORK"
if [ "$DEVICE" = cuda ] && [ "$NGPU" -eq 0 ]; then
    fail setup "--device cuda but torch sees no GPU (torch.cuda.device_count() is 0); --device cpu runs the CPU parts"
    echo "gpu_check: 0 passed, 1 failed, 0 skipped"
    exit 1
fi
if [ "$DEVICE" = cuda ]; then AMP=(--set train.amp=bf16); PRECISION=bf16; else AMP=(); PRECISION=fp32; fi

part_smoke() {
    local task file
    for task in classification detection pose ood translation; do
        if run "smoke-$task" "${KD[@]}" run --task "$task" --protocol smoke --method kd --device "$DEVICE" \
                --results "$WORK/smoke" "${AMP[@]}"; then
            file=$(ls "$WORK"/smoke/"$task"/smoke*/kd/seed0.json 2>/dev/null | head -n 1)
            check "smoke/$task" record "$file" --device "$DEVICE" --precision "$PRECISION"
        else
            fail "smoke/$task" "kdbench run failed (log: $WORK/logs/smoke-$task.log)"
        fi
    done
}

part_sweep() {
    local workers gpus seed files=()
    if [ "$DEVICE" = cuda ]; then gpus=1; workers=$((NGPU >= 2 ? 2 : 1)); else gpus=0; workers=2; fi
    local sweep=(sweep --tasks classification --methods baseline --protocol smoke --results "$WORK/sweep")
    if run sweep "${KD[@]}" "${sweep[@]}" --seeds 0-1 --workers "$workers" --gpus-per-run "$gpus" \
            --device "$DEVICE" --logs "$WORK/sweep-logs"; then
        for seed in 0 1; do
            files+=("$WORK/sweep/classification/smoke/baseline/seed$seed.json")
            check "sweep/seed$seed" record "${files[-1]}" --device "$DEVICE" --precision fp32
        done
        if [ "$DEVICE" = cuda ] && [ "$workers" -eq 2 ]; then
            check "sweep/placement" distinct "${files[@]}"
        else
            skip "sweep/placement" "$([ "$DEVICE" = cuda ] && echo "1 GPU: the two runs take turns on it" \
                || echo "cpu: no GPU to place runs on")"
        fi
    else
        fail sweep "kdbench sweep --workers $workers --gpus-per-run $gpus failed (logs: $WORK/sweep-logs)"
    fi
    refused "sweep/refuse-cuda-without-gpus" "reserves no GPU" "${KD[@]}" "${sweep[@]}" --seeds 0 --device cuda
    refused "sweep/refuse-too-few-gpus" "--gpus-per-run 1" "${KD[@]}" "${sweep[@]}" --seeds 0 \
        --workers $((NGPU + 1)) --gpus-per-run 1
}

part_ddp() {
    local how="gloo on CPU"
    if [ "$DEVICE" = cuda ]; then
        how=$([ "$NGPU" -ge 2 ] && echo "NCCL on 2 GPUs" || echo "2 ranks sharing 1 GPU over gloo")
    fi
    if run ddp "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m kdbench run --task classification \
            --protocol smoke --method pskd --device "$DEVICE" --results "$WORK/ddp" "${AMP[@]}"; then
        check "ddp ($how)" record "$(ls "$WORK"/ddp/classification/smoke*/pskd/seed0.json 2>/dev/null | head -n 1)" \
            --device "$DEVICE" --precision "$PRECISION" --world 2
    else
        fail "ddp ($how)" "torchrun --nproc_per_node 2 failed (log: $WORK/logs/ddp.log)"
    fi
}

part_cache() {
    skip cache "the iwslt14 teacher-cache estimate is not part of this check yet (kdbench prints it at the start of a distillation run on that card; its data is not in the shared data)"
}

part_standard() {
    local fixtures="$DATA/coco-fixtures" root="$WORK/coco" split file
    if [ -z "$DATA" ] || [ ! -f "$fixtures/test_coco.json" ]; then
        skip standard "no coco-fixtures/ under KDBENCH_DATA_ROOT (${DATA:-unset}); see docs/test-data.md"
        return
    fi
    fixtures=$(cd "$fixtures" && pwd)
    mkdir -p "$root/annotations"  # COCO's layout, by links (as tests/pose/test_standard.py lays it out)
    for split in train val; do
        ln -sfn "$fixtures/test_coco.json" "$root/annotations/instances_${split}2017.json"
        ln -sfn "$fixtures/test_coco_wholebody.json" "$root/annotations/coco_wholebody_${split}_v1.0.json"
        ln -sfn "$fixtures" "$root/${split}2017"
    done
    local common=(--set train.epochs=2 --set train.eval_every=0 --set data.val_images=1)
    local det=("${common[@]}") pose=("${common[@]}")
    if [ "$DEVICE" = cpu ]; then  # the CPU sizes of the tests that run these cards
        det+=(--set data.size=128 --set student.queries=10 --set train.batch_size=2)
        pose+=(--set "data.input_size=[48, 64]" --set "simcc.sigma=[1.225, 1.415]" --set train.batch_size=8)
    fi
    local task card sets
    for task in detection pose; do
        if [ "$task" = detection ]; then card=coco2017; sets=("${det[@]}"); else card=coco_wholebody; sets=("${pose[@]}"); fi
        if run "standard-$task" "${KD[@]}" run --task "$task" --protocol "$card" --method baseline --device "$DEVICE" \
                --data-root "$root" --results "$WORK/standard" "${sets[@]}"; then
            file=$(ls "$WORK"/standard/"$task"/"$card"*/baseline/seed0.json 2>/dev/null | head -n 1)
            check "standard/$card" record "$file" --device "$DEVICE" --precision card
            check "standard/$card throughput" throughput "$file" --data-root "$root" --protocol "$card" "${sets[@]}"
        else
            fail "standard/$card" "kdbench run failed (log: $WORK/logs/standard-$task.log)"
        fi
    done
}

for part in smoke sweep ddp cache standard; do
    if has "$part"; then
        at=$SECONDS
        "part_$part"
        echo "      ($part: $((SECONDS - at)) s)"
    else
        skip "$part" "not in --parts $PARTS"
    fi
done
echo "gpu_check: $passed passed, $failed failed, $skipped skipped in $((SECONDS - started)) s"
[ "$failed" -eq 0 ]
