# The documented 1.2B run (docs/reference_runs.md#the-production-run), value for value.
# torchrun --nproc_per_node=8 train.py config/production_8gpu.py
# Its names -> ours: per_device_train_batch_size 8 -> micro_batch_size; the effective
# batch 256 = 8 x gradient_accumulation_steps 4 x 8 GPUs -> global_batch_size (the
# accumulation is derived: 4 on 8 GPUs, 32 on 1); save_steps -> save_interval;
# logging_steps -> log_interval. 1,024-token sequences: 262,144 tokens per step.
# Its claimed 8.2 hours is impossible: `python train.py config/production_8gpu.py --dry_run`.
run_name = "production_8gpu"
data_dir = "data/corpus_51b"  # the 51B-token dataset, prepared with the GPT-2 tokenizer
model = "1.2b"  # 22 x 2,048, 16 heads of 128, context 1,024: 1.213B parameters

global_batch_size = 256
micro_batch_size = 8
max_steps = 590_625
learning_rate = 3e-4
min_lr = 3e-5
warmup_steps = 11_812  # 2% of training

log_interval = 3_000
save_interval = 20_000
eval_interval = 20_000
eval_batches = 100
plan_gpus = 8
