# The third plan (docs/reference_runs.md#the-16-gb-plan): a ~1B model of GPT-2 XL's shape
# (48 x 1,600, 25 heads, context 1,024: 1,557,611,200 parameters with the GPT-2 vocab)
# trained on ONE 16 GB GPU with a peak under 14 GiB, 1,000+ steps in its first milestone.
# Its own arithmetic says plain training cannot fit: fp32 weights (6.2 GB) + gradients
# (6.2 GB) + AdamW (12.5 GB). FSDP with offload keeps all three in pinned CPU memory
# (~25 GB of host RAM) and steps AdamW on the CPU; activation checkpointing keeps only each
# block's input. `python train.py config/gpt2_1b_16gb.py --dry_run --plan_gpu_memory_gib=16`
# python prepare_data.py --input=PATH/TO/CORPUS --name=corpus_1b     # GPT-2 tokens
# python train.py config/gpt2_1b_16gb.py
run_name = "gpt2_1b_16gb"
data_dir = "data/corpus_1b"
model = "gpt2-1.5b"  # 48 x 1,600, 25 heads, context 1,024

global_batch_size = 8  # the plan's first milestone: 8 sequences per step
micro_batch_size = 8
max_steps = 1_000
learning_rate = 3e-4
min_lr = 3e-5
warmup_steps = 100
dtype = "auto"  # bf16 where the GPU has it, fp16 with loss scaling on older 16 GB cards (T4, V100)

parallelism = "fsdp"
offload = True
activation_checkpointing = "full"  # each block recomputed in backward: the least activation memory
loss_chunk = (
    1024  # memory first: one chunk of logits at a time, compiled or not (1.07 GiB vs 2.30 all at once)
)

log_interval = 10
eval_interval = 100
eval_batches = 20
save_interval = 500
plan_gpus = 1
plan_gpu_memory_gib = (16,)
