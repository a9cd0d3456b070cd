# GPT-2 small (124M) on OpenWebText-style data, nanoGPT's recipe: ~0.5M tokens per step.
# python prepare_data.py --input=PATH/TO/CORPUS --name=owt
# torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.py
run_name = "gpt2_124m"
data_dir = "data/owt"
model = "gpt2-124m"
dropout = 0.0

global_batch_size = 480  # 480 x 1,024 = 491,520 tokens per step
micro_batch_size = 12
max_steps = 600_000
learning_rate = 6e-4
min_lr = 6e-5
warmup_steps = 2_000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1_000
eval_batches = 200
log_interval = 10
save_interval = 5_000
plan_gpus = 8
