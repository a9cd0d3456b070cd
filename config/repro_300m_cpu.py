# A CPU-scale reproduction of the documented 300M recipe (docs/reference_runs.md#the-300m-run):
# the same optimizer (AdamW 0.9/0.95, eps 1e-8, weight decay 0.1), clipping 1.0, dropout 0.1,
# GPT-2 tokenizer, warmup over 2% of the steps, cosine to lr/10, and checkpoints at the same
# fractions of the run (2%, 10%, 25%, 50%, 75%, 100%), on the default data
# (python prepare_data.py). What differs and why: docs/repro_300m_cpu/README.md.
# python train.py config/repro_300m_cpu.py
run_name = "repro_300m_cpu"
data_dir = "data/shakespeare"
model = "small-cpu"  # narrowed to 128 below
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.1

max_steps = 800
global_batch_size = 8  # 1,024 tokens per step: what 2 CPU cores train in ~15 minutes
micro_batch_size = 8
learning_rate = 2e-3  # a model with 0.8M non-embedding parameters takes larger steps than 300M
min_lr = 2e-4
warmup_steps = 16  # 2% of max_steps, as 2,000 of 100,000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
grad_clip = 1.0
device = "cpu"
dtype = "float32"  # the documented run used fp16 autocast; on a CPU fp16 is ~100x slower
compile = False

log_interval = 20
eval_interval = 80
eval_batches = 10
save_interval = 800
save_steps = (16, 80, 200, 400, 600)  # 2%, 10%, 25%, 50%, 75% (and 100% at the end)
