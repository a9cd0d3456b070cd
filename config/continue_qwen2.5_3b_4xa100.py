# Continued pretraining of Qwen2.5-3B on a corpus of your own, on 4 x A100 40 GB.
# 1. Download the model (config.json, model.safetensors shards, tokenizer files):
#      huggingface-cli download Qwen/Qwen2.5-3B --local-dir models/Qwen2.5-3B
# 2. Tokenize the corpus with the model's own tokenizer:
#      python prepare_data.py --input=PATH/TO/CORPUS --tokenizer=models/Qwen2.5-3B --name=corpus_qwen
# 3. Check the plan, then train; export the result for transformers:
#      python train.py config/continue_qwen2.5_3b_4xa100.py --dry_run   (reads config.json only)
#      torchrun --nproc_per_node=4 train.py config/continue_qwen2.5_3b_4xa100.py
#      python export.py --checkpoint=checkpoints/continue_qwen2.5_3b --out=exports/qwen2.5-3b-continued --dtype=bfloat16
run_name = "continue_qwen2.5_3b"
init_from = "models/Qwen2.5-3B"  # shape, weights and tokenizer from the folder (3.09B parameters)
resume = "auto"  # the folder's weights on the first launch; after a preemption, this run's newest checkpoint
data_dir = "data/corpus_qwen"
block_size = (
    4096  # Qwen2.5's pretraining context (its 32,768 is long-context extension); rope, so no weights change
)

global_batch_size = 128  # 128 x 4,096 = 524,288 tokens per step
micro_batch_size = 2
max_steps = 2_000  # 1.05B tokens
# A lower peak than pretraining's and a short warmup: the weights are already trained, and a
# large step forgets what they know. 3e-5 sits in the 1e-5 to 3e-5 range continued-pretraining
# reports use for models of this size, cosine to 10% (min_lr), warmup 5% of the steps.
learning_rate = 3e-5
min_lr = 3e-6
warmup_steps = 100
weight_decay = 0.1
grad_clip = 1.0

dtype = "bfloat16"
# What the planner finds fits 40 GB (--dry_run): DDP needs 59+ GiB a GPU, FSDP with selective
# checkpointing 50.2; FSDP with full activation checkpointing 33.3 GiB, the fastest that fits.
parallelism = "fsdp"
activation_checkpointing = "full"
loss_chunk = 4096  # 151,936-token vocab: one chunk of logits at a time

log_interval = 10
eval_interval = 200
eval_batches = 20
save_interval = 500
plan_gpus = 4
plan_gpu_memory_gib = (40,)
