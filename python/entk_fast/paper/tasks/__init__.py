"""The paper's training tasks: one module per toy task (its config, trainer and CLI options)
and the registry that maps a task's kind (``tms``, ``modadd``, ``transformer``) to it."""
