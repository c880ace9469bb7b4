#!/usr/bin/env bash
# The README's main job on the embedded default corpus: data prep -> LAI training on 2 CPU ranks
# (or every local GPU) through the deepspeed launcher -> valuation report. Idempotent: data prep
# skips completed shards and training resumes (a finished run just re-exports and reports).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<USAGE
Usage: launch/demo.sh [dotted.key=value ...]

Runs, from the repository root:
  lai-prep --source stdlib --out \$LAI_DEMO_DATA            (default data/stdlib)
  launch/train.sh configs/tiny_cpu.yaml run.out_dir=\$LAI_DEMO_RUN key=value ...   (default runs/demo)
  lai-report \$LAI_DEMO_RUN
and prints where each output is. Overrides go to lai-train (e.g. train.steps=50).
USAGE
}
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }

cd "$LAI_ROOT"
data="${LAI_DEMO_DATA:-data/stdlib}"
run="${LAI_DEMO_RUN:-runs/demo}"
start=$SECONDS

"$(lai_tool lai-prep)" --source stdlib --out "$data"
launch/train.sh configs/tiny_cpu.yaml "data.sources=[{path: $data, weight: 1.0}]" \
    "run.out_dir=$run" "$@"
"$(lai_tool lai-report)" "$run"

cat <<DONE

demo finished in $((SECONDS - start)) s. Outputs:
  data (shards, tokenizer, manifest)  $data/
  resolved config, DeepSpeed JSON     $run/config.yaml  $run/ds_config.json
  training log                        $run/train.log
  checkpoints                         $run/checkpoints/
  final model + tokenizer             $run/final/   (AutoModelForCausalLM.from_pretrained("$run/final"))
  valuation ledger                    $run/ledger/
  valuation report                    $run/report/report.md  report.json  documents.csv  valuation.png
  keep/drop list                      $run/report/keep_drop.csv   (lai-prep --source stdlib --exclude it --out ...)
  TensorBoard                         launch/tensorboard.sh $run   (then open http://127.0.0.1:6006;
                                      from your laptop: ssh -L 6006:127.0.0.1:6006 THIS_HOST)
DONE
