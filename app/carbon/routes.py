from __future__ import annotations

from app.apidoc import error_docs
from app.auth.guards import current_actor, login_required
from app.carbon import service
from app.carbon.schemas import RulePublishSchema, RuleQuerySchema, RuleSchema
from app.common import page_schema
from app.errors import InvalidState, NotFound
from app.http import Blueprint

blp = Blueprint("carbon", __name__, url_prefix="/api/v1", description="碳减排方法学与积分规则")


RulePage = page_schema(RuleSchema, "RulePage")


@blp.route("/rules", methods=["GET"])
@blp.arguments(RuleQuerySchema, location="query")
@blp.response(200, RulePage)
def list_rules(query):
    """The methodology in force now: factors, fixed points and daily caps, with their sources, by activity."""
    return service.rule_page(**query)


@blp.route("/rules", methods=["POST"])
@login_required("admin")
@error_docs(NotFound, InvalidState)
@blp.arguments(RulePublishSchema)
@blp.response(201, RuleSchema)
def publish_rule(body):
    """Publish a new version of a rule (admin). Past entries keep the version they used. `effective_from` is at least
    10 seconds and at most a year ahead; versions not yet in force that would start at or after it are withdrawn
    (their `valid_to` equals their `valid_from`), so a wrong future date is corrected by publishing again. Fields not
    given are those of the version replaced (the latest one withdrawn, else the one before). A rule's unit never
    changes."""
    body = dict(body)
    return service.publish_rule(current_actor(), body.pop("activity"), body, body.pop("effective_from"))
