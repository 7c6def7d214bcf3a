"""Where the slowed lm-eval tasks live, and a TaskManager that knows them.

lm-eval 0.4.13 finds external tasks only through ``--include_path`` / ``TaskManager(include_path=...)``
(the ``lm_eval.tasks`` entry point declared in pyproject is not read yet), so every slowed entry point
adds :data:`TASK_DIR` to the user's include paths.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

#: The installed task folder (the repository's ``lm_eval_tasks/``, shipped as ``slowed.lm_eval_tasks``).
TASK_DIR: Path = Path(str(files("slowed.lm_eval_tasks")))

IncludePath = str | Path | list[str | Path] | tuple[str | Path, ...] | None


def include_paths(include_path: IncludePath = None) -> list[str]:
    """:data:`TASK_DIR` followed by the user's include path(s), in order (TASK_DIR never listed twice).

    lm-eval lets later paths override earlier ones, so a user's task of the same name wins over ours.
    """
    if include_path is None:
        user_paths: list[str | Path] = []
    elif isinstance(include_path, (list, tuple)):
        user_paths = list(include_path)
    else:
        user_paths = [include_path]
    paths = [str(path) for path in user_paths if Path(path).resolve() != TASK_DIR.resolve()]
    return [str(TASK_DIR), *paths]


def task_manager(include_path: IncludePath = None, **task_manager_kwargs: Any) -> TaskManager:
    """An lm-eval ``TaskManager`` indexing lm-eval's own tasks, ``include_path`` and the slowed tasks.

    ``task_manager_kwargs`` (``metadata``, ``include_defaults``, ...) go to ``TaskManager`` unchanged.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths(include_path), **task_manager_kwargs)
