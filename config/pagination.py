"""Keyset pagination over a set given as one or several querysets ("parts").

A page is the rows after (or before) the last row seen, in the order of a
unique key such as ``(created_at, id)``: no ``OFFSET`` and no ``COUNT``, so the
tenth page costs what the first does and a page over 200,000 rows what it
costs over 2,000.

Why parts: the access policy's patient set is a union of routes (primary
doctor, each membership institution, care-team grants, the patient's own
record). One ``WHERE a OR b OR c ORDER BY key LIMIT n`` forces PostgreSQL to
collect and sort every visible row; ``(part_a ORDER BY key LIMIT n) UNION
(part_b ORDER BY key LIMIT n) ... ORDER BY key LIMIT n`` reads at most ``n``
rows from each route's own ``(route, created_at, id)`` index. ``UNION`` (not
``UNION ALL``) removes a row reached by two routes.

The response has the same shape as DRF's cursor pagination: ``next``,
``previous`` (absolute URLs with an opaque ``cursor`` parameter, or null) and
``results``. A malformed cursor answers 400 naming the ``cursor`` parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Model, Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

CURSOR_PARAM = "cursor"


@dataclass(frozen=True)
class Cursor:
    """A position between two rows: ``forward`` pages go after ``key``, backward pages before it."""

    key: tuple[datetime, int]
    forward: bool

    def encode(self) -> str:
        raw = json.dumps([self.key[0].isoformat(), self.key[1], 1 if self.forward else 0], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            stamp, row_id, forward = json.loads(base64.urlsafe_b64decode(padded.encode()))
            if type(row_id) is not int:
                raise TypeError("the row id is not an integer")
            key = (datetime.fromisoformat(stamp), row_id)
            if key[0].tzinfo is None or forward not in (0, 1):
                raise ValueError("naive timestamp or bad direction")
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as exc:
            raise ValidationError({CURSOR_PARAM: ["Invalid cursor: follow the next and previous links."]}) from exc
        return cls(key=key, forward=bool(forward))


@dataclass(frozen=True)
class Parts:
    """A set of rows as the union of querysets over one model.

    ``load`` shapes the query that reads the page's rows (joins, columns,
    annotations); the parts themselves only decide which rows.
    """

    querysets: Sequence[QuerySet[Any]]
    load: Callable[[QuerySet[Any]], QuerySet[Any]] | None = None

    def filter(self, *args: Any, **kwargs: Any) -> Parts:
        return Parts(tuple(qs.filter(*args, **kwargs) for qs in self.querysets), self.load)

    def keyset_page(
        self, *, fields: tuple[str, str], size: int, cursor: Cursor | None, descending: bool = False
    ) -> tuple[list[Any], bool]:
        return keyset_page(self, fields=fields, size=size, cursor=cursor, descending=descending)


def _beyond(fields: tuple[str, str], key: tuple[datetime, int], ascending: bool) -> Q:
    first, second = fields
    op = "gt" if ascending else "lt"
    # The first condition alone is what an index can range-scan; the second
    # breaks ties on the timestamp.
    return Q(**{f"{first}__{'gte' if ascending else 'lte'}": key[0]}) & (
        Q(**{f"{first}__{op}": key[0]}) | Q(**{f"{second}__{op}": key[1]})
    )


def keyset_page(
    parts: Parts, *, fields: tuple[str, str], size: int, cursor: Cursor | None, descending: bool = False
) -> tuple[list[Any], bool]:
    """Up to ``size`` rows in key order from ``cursor``, and whether more lie beyond them.

    One part is one query. Several parts are two, however many there are: the
    page's keys (a UNION of per-part keyset scans, each ``size + 1`` rows),
    then those rows, read by ``parts.load``. (One statement with the
    UNION as an ``IN`` subquery costs more: PostgreSQL then plans the joins and
    the union together, about 3 ms at 200,000 patients against 0.2 ms.)
    """
    if not parts.querysets:
        return [], False
    forward = cursor is None or cursor.forward
    ascending = forward != descending  # the direction this query reads the key in
    order = fields if ascending else tuple(f"-{name}" for name in fields)
    scans = []
    for queryset in parts.querysets:
        scan = queryset if cursor is None else queryset.filter(_beyond(fields, cursor.key, ascending))
        scans.append(scan.order_by(*order))
    load = parts.load or (lambda queryset: queryset)
    if len(scans) == 1:
        rows = list(load(scans[0])[: size + 1])
    else:
        key_scans = [scan.values_list(*fields)[: size + 1] for scan in scans]
        keys = list(key_scans[0].union(*key_scans[1:]).order_by(*order)[: size + 1])
        model: type[Model] = parts.querysets[0].model
        found = load(model._default_manager.filter(pk__in=[row_id for _, row_id in keys]))
        by_id = {row.pk: row for row in found}
        rows = [by_id[row_id] for _, row_id in keys if row_id in by_id]
    more = len(rows) > size
    rows = rows[:size]
    if not forward:
        rows.reverse()
    return rows, more


class KeysetPagination(BasePagination):
    """DRF pagination for views whose ``get_queryset`` returns a queryset, :class:`Parts`, or any source
    with a ``keyset_page(fields=, size=, cursor=, descending=)`` method."""

    fields: tuple[str, str] = ("created_at", "id")
    descending = False  # True: newest first
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any]:
        # Anything with a keyset_page method (Parts, or a source that reads its keys in SQL), else a queryset.
        source = queryset if hasattr(queryset, "keyset_page") else Parts((queryset,))
        self.request = request
        self.size = self._size(request)
        token = request.query_params.get(CURSOR_PARAM)
        self.cursor = Cursor.decode(token) if token else None
        self.page: list[Any]
        self.page, more = source.keyset_page(
            fields=self.fields, size=self.size, cursor=self.cursor, descending=self.descending
        )
        forward = self.cursor is None or self.cursor.forward
        self.has_next = more if forward else self.cursor is not None
        self.has_previous = (self.cursor is not None) if forward else more
        return self.page

    def _size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return size

    def _key(self, row: Any) -> tuple[datetime, int]:
        first, second = self.fields
        return getattr(row, first), getattr(row, "pk" if second == "id" else second)

    def _link(self, cursor: Cursor | None) -> str:
        url = self.request.build_absolute_uri()
        if cursor is None:
            return remove_query_param(url, CURSOR_PARAM)
        return replace_query_param(url, CURSOR_PARAM, cursor.encode())

    def get_next_link(self) -> str | None:
        if not self.has_next:
            return None
        if not self.page:  # a backward page that ran past the start: go back to the first page
            return self._link(None)
        return self._link(Cursor(self._key(self.page[-1]), forward=True))

    def get_previous_link(self) -> str | None:
        if not self.has_previous:
            return None
        if not self.page:
            return self._link(None)
        return self._link(Cursor(self._key(self.page[0]), forward=False))

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.get_next_link(), "previous": self.get_previous_link(), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results"],
            "properties": {
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": CURSOR_PARAM,
                "required": False,
                "in": "query",
                "description": "Opaque position from a next or previous link.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Rows per page, 1 to {self.max_page_size} (default {self.page_size}).",
                "schema": {"type": "integer"},
            },
        ]
