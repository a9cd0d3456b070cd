# The demo: a character-level model of Shakespeare's plays on a laptop CPU.
# Prepare the data first: python prepare_data.py --tokenizer=char --name=shakespeare_char
# Bar: nanoGPT's documented CPU recipe (this shape: 4 x 128, context 64; batch 12, 2,000
# iterations) reaches val loss 1.88 in about 3 minutes. Here a batch of 32 at lr 2e-3 for
# 1,500 steps reaches 1.77 in 3-4 minutes on 2 cores (README: "Headline figures").
run_name = "shakespeare_cpu"
data_dir = "data/shakespeare_char"
model = "tiny"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0

global_batch_size = 32
micro_batch_size = 32
max_steps = 1_500
learning_rate = 2e-3
min_lr = 2e-4
warmup_steps = 100
beta2 = 0.99  # tokens per step are few, so a shorter second-moment memory helps

device = "auto"  # the GPU when there is one
dtype = "auto"  # fp32 on CPU, bf16 on GPUs that have it
compile = False  # compiling takes longer than this run
eval_interval = 250
eval_batches = 20
log_interval = 100
save_interval = 500
