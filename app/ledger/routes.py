from __future__ import annotations

from app.apidoc import error_docs
from app.auth.guards import RESIDENT, current_actor, login_required
from app.common import PageArgsSchema, page_schema
from app.db import MAX_BIG_ID
from app.errors import Duplicate, InsufficientPoints, InvalidState, NotFound
from app.http import Blueprint
from app.idempotency.service import idempotent, key_reference
from app.ledger import service
from app.ledger.schemas import AdjustmentSchema, DailyCapsSchema, EntrySchema, ReversalSchema

blp = Blueprint("ledger", __name__, url_prefix="/api/v1", description="积分账本")

EntryPage = page_schema(EntrySchema, "EntryPage")


@blp.route("/me/ledger", methods=["GET"])
@login_required(RESIDENT)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, EntryPage)
def my_ledger(query):
    """The resident's own entries, newest first, cursor-paginated."""
    return service.ledger_page(current_actor().id, query["cursor"], query["limit"])


@blp.route("/me/caps", methods=["GET"])
@login_required(RESIDENT)
@blp.response(200, DailyCapsSchema)
def my_daily_caps():
    """Today's daily caps, and what the resident has earned against each.

    What a scan or a deposit can still credit today, before it is refused with 409 cap_reached."""
    return service.daily_caps(current_actor().id)


@blp.route("/residents/<int:resident_id>/adjustments", methods=["POST"])
@login_required("admin")
@idempotent
@error_docs(NotFound, InsufficientPoints, Duplicate)
@blp.arguments(AdjustmentSchema)
@blp.response(201, EntrySchema)
def adjust(body, resident_id):
    """Grant (positive) or claw back (negative) points by hand, with a mandatory reason. Audited."""
    return service.adjust(current_actor(), resident_id, body["delta"], body["reason"], reference=key_reference())


@blp.route(f"/ledger/entries/<int(max={MAX_BIG_ID}):entry_id>/reverse", methods=["POST"])
@login_required("admin")
@idempotent
@error_docs(NotFound, InvalidState, InsufficientPoints)
@blp.arguments(ReversalSchema)
@blp.response(201, EntrySchema)
def reverse(body, entry_id):
    """Cancel an entry with its exact opposite, with a reason. Audited. A reversed check-in or deposit gives its
    points back to the daily caps of the day it was credited, so a corrected deposit can be recorded that day; a
    check-in's once-a-day visit stays used."""
    return service.reverse_entry(current_actor(), entry_id, body["reason"])
