"""MBPP: the tasks and splits, the prompt formats, and generated MBPP-format tasks."""
