"""How a training run runs: its settings and state, how it is resolved and planned, the loop's parts (stop decision, step numbers, schedule) and what it reports."""
