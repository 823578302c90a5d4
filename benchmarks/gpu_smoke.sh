#!/usr/bin/env bash
# GPU smoke check of the training paths: SFT and DPO of the tiny planner with ZeRO-3 under
# torchrun on the GPUs of this machine (NCCL, bf16 chosen automatically), then a check that the
# exports are bf16 HF directories that generate. Prints one summary JSON line at the end.
# Usage: benchmarks/gpu_smoke.sh ESCONV_JSON [RUN_DIR] [NPROC]
set -euo pipefail
esconv="$1"; run="${2:-/tmp/esc-gpu-smoke}"; nproc="${3:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
export WANDB_MODE="${WANDB_MODE:-offline}" TOKENIZERS_PARALLELISM=false
split="$(dirname "$esconv")/splits/decoupledesc_split.json"
rm -rf "$run"
common=(run.output_dir="$run" run.dist_timeout_s=300)
# where a stage writes: the run layout's answer (esc-dist stage out), not a path spelled here
out() { $py -m esc_dist stage out "$1" "${common[@]}"; }
$py -m esc_dist prepare --esconv "$esconv" --split "$split" --out "$(out prepare)" \
  data.max_dialogues.train=40 data.max_dialogues.validation=4 data.max_dialogues.test=4 \
  data.max_history_messages=8
$py -m esc_dist tiny-model --corpus "$esconv" --out "$(out tiny-model)"
torchrun --nproc_per_node="$nproc" --master_port=29731 -m esc_dist sft --role planner "${common[@]}" \
  sft.deepspeed="$root/esc_dist/ds_configs/zero3.json" sft.max_steps=20 sft.save_steps=10 sft.logging_steps=5
$py - "$run" <<'PY'
import sys
from pathlib import Path
from datasets import load_from_disk
from esc_dist.io import mark_completed
from esc_dist.ipm.prefdial import save_dataset
from esc_dist.layout import RunLayout
run = RunLayout(Path(sys.argv[1]))
rows = load_from_disk(str(run.data / "planner"))["train"].select(range(128))
pairs = [{"id": r["id"] + "#s0", "turn_id": r["id"], "role": "planner", "prompt": r["prompt"],
          "chosen": r["strategy"], "rejected": r["strategy"][::-1].lower(),
          "gold_strategy": r["strategy"], "sampled_strategy": None} for r in rows]
save_dataset(pairs, run.pairs("planner") / "dataset")
mark_completed(run.pairs("planner"))
PY
torchrun --nproc_per_node="$nproc" --master_port=29732 -m esc_dist dpo --role planner "${common[@]}" \
  dpo.deepspeed="$root/esc_dist/ds_configs/zero3.json" dpo.max_steps=16 dpo.save_steps=8 dpo.logging_steps=4 \
  dpo.learning_rate=2e-3
$py - "$run" <<'PY'
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from esc_dist.layout import RunLayout
run = RunLayout(Path(sys.argv[1]))
out = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
for stage in ("sft", "dpo"):
    d = run.model(stage, "planner")
    m = json.loads((d / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    enc = tok.apply_chat_template([{"role": "user", "content": "I feel lost."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    out[stage] = {"world_size": m["world_size"], "steps": m["global_step"],
                  "final_loss": m["final_loss"], "export_dtype": str(model.dtype),
                  "reward_accuracy": m.get("final_reward_accuracy"),
                  "generated": gen.shape[1] > enc["input_ids"].shape[1]}
print("SMOKE", json.dumps(out))
PY
