# The documented 300M run (docs/reference_runs.md#the-300m-run), value for value.
# torchrun --standalone --nproc_per_node=4 train.py config/train_300m.py
# The document: "512 (128 per GPU x 4 GPUs)" and "accumulated over 4 steps", i.e. 32 per
# micro-batch x 4 accumulation x 4 GPUs. `--dry_run --micro_batch_size=32` shows that split
# needs 74 GiB per GPU (32 with activation checkpointing): at 32 x 2,048 the logits alone
# are 18 GiB even fused by the compiler. The global batch is what the run means, so we keep
# 512 and split it as 8 x 16 x 4, which fits a 40 GB A100 (22 GiB, `--dry_run`) and makes
# the same optimizer steps.
run_name = "train_300m"
data_dir = "data/corpus_300m"  # the 38 GB corpus, prepared with the GPT-2 tokenizer (95/5 split)
model = "300m"  # 24 x 1,024, context 2,048, tied; true count 299.2M (docs/training.md: presets)
dropout = 0.1

global_batch_size = 512
micro_batch_size = 8
max_steps = 100_000
learning_rate = 6e-4
min_lr = 6e-5
warmup_steps = 2_000
lr_decay_steps = 100_000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
grad_clip = 1.0
dtype = "float16"  # FP16 autocast with gradient scaling, as documented

log_interval = 100
eval_interval = 1_000
eval_batches = 100
save_interval = 10_000
early_stopping_patience = 10  # documented: early stopping on val loss (patience not stated)
plan_gpus = 4
