"""LoRA: train peft adapters on chosen layers, merge them, compare neuron coefficients with the base."""
