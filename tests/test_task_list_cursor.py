"""A task list cursor that no list returned is InvalidCursor (GET /tasks: 400), on both backends."""

from __future__ import annotations

import pytest

from gateway.core.backends import InvalidCursor


@pytest.mark.parametrize("cursor", [":", "-1", "1.5", " 1", "\u00b2", "9" * 16])
async def test_a_cursor_no_list_returned_is_refused(backend, cursor):
    with pytest.raises(InvalidCursor):
        await backend.tasks.list(None, 10, cursor)


async def test_offsets_are_cursors(backend):
    assert await backend.tasks.list(None, 10, "0") == ([], None)
    assert await backend.tasks.list(None, 10, "12") == ([], None)
