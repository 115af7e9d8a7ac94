from __future__ import annotations

from app.apidoc import error_docs
from app.auth.guards import RESIDENT, current_actor, login_required
from app.common import PageArgsSchema, page_schema
from app.errors import Duplicate, InvalidState, NotFound
from app.http import Blueprint
from app.ledger import service as ledger
from app.people import service
from app.people.schemas import (
    CommunityCreateSchema,
    CommunitySchema,
    MeSchema,
    MeUpdateSchema,
    OrganizationCreateSchema,
    OrganizationQuerySchema,
    OrganizationSchema,
    ResidentQuerySchema,
    ResidentSchema,
    ResidentUpdateSchema,
    StaffCreateSchema,
    StaffSchema,
    StaffUpdateSchema,
)

blp = Blueprint("people", __name__, url_prefix="/api/v1", description="居民、工作人员、社区与联盟单位")

StaffPage = page_schema(StaffSchema, "StaffPage")
ResidentPage = page_schema(ResidentSchema, "ResidentPage")
CommunityPage = page_schema(CommunitySchema, "CommunityPage")
OrganizationPage = page_schema(OrganizationSchema, "OrganizationPage")


@blp.route("/communities", methods=["GET"])
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, CommunityPage)
def list_communities(query):
    """Communities (社区/村居), oldest first."""
    return service.community_page(**query)


@blp.route("/communities", methods=["POST"])
@login_required("admin")
@error_docs(Duplicate)
@blp.arguments(CommunityCreateSchema)
@blp.response(201, CommunitySchema)
def create_community(body):
    """Create a community (admin)."""
    return service.create_community(current_actor(), body)


@blp.route("/organizations", methods=["GET"])
@blp.arguments(OrganizationQuerySchema, location="query")
@blp.response(200, OrganizationPage)
def list_organizations(query):
    """Alliance member organisations (低碳联盟成员单位), oldest first."""
    return service.organization_page(**query)


@blp.route("/organizations", methods=["POST"])
@login_required("admin")
@error_docs(Duplicate)
@blp.arguments(OrganizationCreateSchema)
@blp.response(201, OrganizationSchema)
def create_organization(body):
    """Create an alliance organisation (admin)."""
    return service.create_organization(current_actor(), body)


@blp.route("/staff", methods=["POST"])
@login_required("admin", "alliance")
@error_docs(Duplicate)
@blp.arguments(StaffCreateSchema)
@blp.response(201, StaffSchema)
def create_staff(body):
    """Create a staff account. Admins create any role; an alliance member only merchants and alliance
    accounts of its own organisation, for its own stores."""
    return service.create_staff(current_actor(), body)


@blp.route("/staff", methods=["GET"])
@login_required("admin", "alliance")
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, StaffPage)
def list_staff(query):
    """Staff accounts: all for admins, the own organisation's for alliance members."""
    return service.list_staff(current_actor(), query["cursor"], query["limit"])


@blp.route("/staff/me", methods=["GET"])
@login_required("admin", "alliance", "merchant", "worker", "collector")
@blp.response(200, StaffSchema)
def staff_me():
    """The calling staff member's own account and scopes."""
    actor = current_actor()
    return service.get_staff(actor, actor.id)


@blp.route("/staff/<int:staff_id>", methods=["GET"])
@login_required("admin", "alliance")
@error_docs(NotFound)
@blp.response(200, StaffSchema)
def get_staff(staff_id):
    """One staff account, within scope."""
    return service.get_staff(current_actor(), staff_id)


@blp.route("/staff/<int:staff_id>", methods=["PATCH"])
@login_required("admin", "alliance")
@error_docs(NotFound, InvalidState)
@blp.arguments(StaffUpdateSchema, required=False)  # no body changes nothing, and answers as it is
@blp.response(200, StaffSchema)
def update_staff(body, staff_id):
    """Deactivate, reset the password of, or re-scope a staff account."""
    return service.update_staff(current_actor(), staff_id, body)


@blp.route("/me", methods=["GET"])
@login_required(RESIDENT)
@blp.response(200, MeSchema)
def get_me():
    """The resident's profile with balance, CO₂e, lifetime points and the next expiry."""
    return ledger.profile(current_actor().id)


@blp.route("/me", methods=["PATCH"])
@login_required(RESIDENT)
@blp.arguments(MeUpdateSchema, required=False)  # no body changes nothing, and answers as it is
@blp.response(200, MeSchema)
def update_me(body):
    """Change the nickname or the community."""
    return service.update_me(current_actor(), body)


@blp.route("/residents", methods=["GET"])
@login_required("admin", "worker")
@blp.arguments(ResidentQuerySchema, location="query")
@blp.response(200, ResidentPage)
def list_residents(query):
    """Residents: all for admins, the own community's for workers. `q` finds a nickname containing the text (any
    case), or the resident with that id."""
    return service.list_residents(current_actor(), **query)


@blp.route("/residents/<int:resident_id>", methods=["PATCH"])
@login_required("admin", "worker")
@error_docs(NotFound)
@blp.arguments(ResidentUpdateSchema)
@blp.response(200, ResidentSchema)
def update_resident(body, resident_id):
    """Freeze or unfreeze a resident, with a reason (audited)."""
    return service.set_resident_status(current_actor(), resident_id, body["status"], body["reason"])[0]
