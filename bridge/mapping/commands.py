"""What a mapping produces: lead commands, the contract between the mapping engine and the worker.

A command says *what* to change in terms the mapping author used (lead state and custom field
names or ids); the worker resolves names against the table and builds the Connect API bodies.
Fields present in `data`, `custom_fields` and `extras` are sent; a value of None is sent as JSON
null (an RFC 7396 delete on a patch, dropped on a create). Absent fields are left untouched.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

Action = Literal["create", "patch", "upsert"]

# Upstream names of the optional top-level fields a mapping may set (CONTRACT §2).
EXTRA_FIELDS = {
    "follow_up_date": "followUpDate",
    "first_opened_at": "firstOpenedAt",
    "appointment_type": "interestedInAppointmentTypeId",
}


class LeadCommand(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mapping: str
    index: int = Field(ge=0, description="position of this command in its delivery")
    element: str | None = Field(
        default=None,
        exclude=True,
        description="with `each`: the element's identity in its delivery (`elements.element_ids`)",
    )
    action: Action
    table: str
    link: str = Field(description="link namespace (defaults to the mapping name)")
    key: str | None = Field(default=None, description="the source record's id, stringified")
    order: str | None = Field(default=None, description="ordering value (ISO-8601 or number), if any")
    order_scope: str | None = Field(
        default=None, description="what `order` is compared within, per key; None: the key alone"
    )
    state: str | None = Field(default=None, description="lead state name or id; None: not set")
    data: dict[str, Any] = Field(default_factory=dict)
    custom_fields: dict[str, Any] = Field(default_factory=dict, description="name or id -> value")
    extras: dict[str, Any] = Field(
        default_factory=dict, description="followUpDate, firstOpenedAt, interestedInAppointmentTypeId"
    )

    @model_serializer(mode="wrap")
    def _without_unset_scope(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`order_scope` is shown only where a mapping sets it (most do not)."""
        dumped: dict[str, Any] = handler(self)
        if dumped.get("order_scope", "") is None:
            del dumped["order_scope"]
        return dumped

    def is_empty_patch(self) -> bool:
        return self.state is None and not self.data and not self.custom_fields and not self.extras


class ElementFailure(BaseModel):
    """An `each` element the mapping could not turn into a command (planned with `isolate`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, description="the element's position in its delivery")
    element: str | None = Field(default=None, description="its identity (`elements.element_ids`)")
    key: str | None = Field(default=None, description="its record's key, where that much resolved")
    reason: str = Field(description="as a dead letter states it (names fields, never values)")
    kind: str = Field(description="mapping, upstream (an enrich fetch), ...: for logs")
    status: int | None = Field(default=None, description="an enrich source's HTTP status")


class Plan(BaseModel):
    """The result of running one mapping over one delivery's payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ignored: bool = Field(default=False, description="the mapping's `when` was falsy")
    commands: list[LeadCommand] = Field(default_factory=list)
    failures: list[ElementFailure] = Field(
        default_factory=list,
        exclude=True,
        description="elements that failed for good, each on its own (`plan(isolate=True)`, the worker's)",
    )
    size: int | None = Field(
        default=None,
        exclude=True,
        description="the commands the payload makes, those left out as applied (`plan(skip=...)`) included",
    )
