"""Pydantic models at every boundary: the canonical task model and agent records."""

from schemas.task import (
    LEGAL_TRANSITIONS,
    STREAM_HINT,
    TERMINAL_STATES,
    Artifact,
    DataPart,
    FilePart,
    InvalidTransition,
    Message,
    Part,
    Route,
    Task,
    TaskArtifactUpdate,
    TaskError,
    TaskEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdate,
    TextPart,
    check_transition,
    new_id,
)

__all__ = [
    "LEGAL_TRANSITIONS", "STREAM_HINT", "TERMINAL_STATES", "Artifact", "DataPart", "FilePart", "InvalidTransition",
    "Message", "Part", "Route", "Task", "TaskArtifactUpdate", "TaskError", "TaskEvent", "TaskState",
    "TaskStatus", "TaskStatusUpdate", "TextPart", "check_transition", "new_id",
]
