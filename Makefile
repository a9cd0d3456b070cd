# The two commands a newcomer runs: `make demo` (the main job) and `make test`.
PYTHON ?= python3

.PHONY: demo test install data

install:
	$(PYTHON) -m pip install -r requirements.txt

# prepare -> train -> report -> sample, then print the command that exports the run.
# Uses the GPU when there is one.
demo: install
	$(PYTHON) prepare_data.py --tokenizer=char --name=shakespeare_char
	$(PYTHON) train.py config/shakespeare_cpu.py --resume=auto
	$(PYTHON) sample.py --checkpoint=checkpoints/shakespeare_cpu --num_samples=2 --max_new_tokens=300
	@echo "To export this run for Hugging Face transformers: $(PYTHON) export.py --checkpoint=checkpoints/shakespeare_cpu --out=exports/shakespeare_cpu"

test: install
	$(PYTHON) -m pytest -q tests
