"""Request ids, the JSON error envelope for every failure, and request-shape checks."""

from __future__ import annotations

import json
import logging
import re
import uuid
from decimal import Decimal
from functools import wraps
from typing import Any, ClassVar

import marshmallow as ma
import redis
import sqlalchemy as sa
from flask import Flask, g, has_request_context, jsonify, request
from flask.sessions import NullSession, SecureCookieSessionInterface
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter
from werkzeug.routing import ValidationError as NotThisRoute

from app.apidoc import (
    IDEMPOTENCY_HEADER,
    REPLAYED,
    REQUEST_ID_HEADER,
    REQUEST_ID_PARAMETER,
    document_errors,
    error_docs,
)
from app.common import ErrorEnvelopeSchema, StrictSchema
from app.db import MAX_ID, db
from app.errors import (
    HTTP_CODES,
    AppError,
    BadRequest,
    InternalError,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationError,
    envelope,
    field_error,
    fields_error,
)
from app.i18n import readable

log = logging.getLogger("app.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}\Z")


_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class OneLineFormatter(logging.Formatter):
    """A message stays on its own line: a username or a path in it may carry a line break, which would start a line
    of the sender's choosing in the log operators search. A traceback appended after the message keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _LINE_BREAKING.sub(lambda m: m.group().encode("unicode_escape").decode(), line)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def note(**ids: int) -> None:
    """Ids a use case resolved that the request does not show (a poster's point, a member code's resident): a refusal's
    log line names them, so support can find a resident's refused scan or deposit."""
    if has_request_context():
        g.setdefault("noted", {}).update(ids)


_LOGGED_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}\Z")
_LOGGED_FIELDS = 8


def _log_refusal(status: int, code: str, details: dict | None) -> None:
    actor = g.get("actor")
    about = [f"{name}={value}" for name, value in g.get("noted", {}).items()]
    for name, value in (details or {}).items():
        if name == "fields":  # the field names; their messages are the resident's to read
            names = [str(key) for key in value]
            # Client-chosen: bounded, and never a token of their own (`x resident=42`) or a value sent as a name.
            shown = [n if _LOGGED_FIELD.fullmatch(n) else "?" for n in names[:_LOGGED_FIELDS]]
            more = f",+{len(names) - _LOGGED_FIELDS}" if len(names) > _LOGGED_FIELDS else ""
            about.append("fields=" + ",".join(shown) + more)
        elif isinstance(value, str | int | float | bool) and name != "string_to_sign":
            about.append(f"{name}={value}")
    by = actor.identity if actor is not None else "-"
    log.info("refused %s %s %s %s %s", request.method, request.path, status, code, " ".join([f"by={by}", *about]))


def error_response(code: str, message: str, status: int, details=None, headers=None):
    body = envelope(code, message, details)
    if has_request_context():
        body["error"]["request_id"] = g.get("request_id")
        if status < 500:  # a server error is logged where it is caught, with its cause
            _log_refusal(status, code, details)
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _validation_fields(messages) -> dict:
    """webargs nests errors by location ({"json": {...}}); the envelope lists them by field."""
    fields: dict = {}
    if isinstance(messages, dict):
        for location, errors in messages.items():
            if isinstance(errors, dict):
                fields.update(errors)
            else:
                fields[location] = errors
    return fields


def handle_http_exception(error: HTTPException):
    status = error.code or 500
    if status >= 500:
        return handle_unexpected(error)
    code, message = HTTP_CODES.get(status, ("bad_request", error.description or "请求无效"))
    limit = getattr(error, "limit", None)  # a rate limit with a sentence of its own (a login's wait) says it
    if status == 429 and limit is not None and limit.error_message:
        message = error.description
    data = getattr(error, "data", None) or {}
    details: dict = {}
    # Keep the exception's own headers (Allow on a 405, WWW-Authenticate…), but not its HTML content type.
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    headers.update(data.get("headers") or {})
    if status == 422 and "messages" in data:
        details = {"fields": _validation_fields(data["messages"])}
        message = readable(details["fields"]) or message
    elif status == 400 and "messages" in data:
        message = "请求体不是有效的 JSON"
    return error_response(code, message, status, details, headers)


def handle_app_error(error: AppError):
    db.session.rollback()
    if error.status >= 500:
        log.error("app error %s: %s", error.code, error.diagnosis or error.message)
    return error_response(error.code, error.message, error.status, error.details, error.headers)


def unreachable(error: Exception) -> str | None:
    """Which shared service a failure is the absence of: PostgreSQL gone or refusing connections (SQLSTATE classes
    08 and 57P, too many connections, or an operational error with no SQLSTATE, when it never answered; or the pool
    had no connection to give), too busy to answer in time (a lock or statement timeout: logged as such, since the
    cure differs), or the rate limits' Redis. A driver's own complaint with no SQLSTATE (a value it cannot adapt) is
    a bug, not an outage."""
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "redis"
    if isinstance(error, sa.exc.TimeoutError):  # every pooled connection busy for pool_timeout
        return "database"
    if isinstance(error, sa.exc.DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", "")  # psycopg's; SQLite's errors have none
        never_answered = sqlstate is None and isinstance(error, sa.exc.OperationalError)
        refusing = (sqlstate or "").startswith(("08", "57P", "53300"))  # 53300: too many connections
        if error.connection_invalidated or never_answered or refusing or _too_busy(error):
            return "database"
    return None


SQLITE_BUSY = 5  # SQLITE_LOCKED (6) is a conflict within one connection: a bug, not another process writing


def _too_busy(error: Exception) -> bool:
    """The database answered, but gave up waiting: PostgreSQL's 55P03, a lock waited for longer than lock_timeout,
    57014, a statement cancelled by statement_timeout, and 40P01 and 40001, a deadlock or a serialization failure
    broken by rolling this transaction back (whole: a retry is safe); SQLite's database locked by another process
    for longer than busy_timeout (`make run`)."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    gave_up = getattr(error.orig, "sqlstate", None) in ("55P03", "57014", "40P01", "40001")
    return gave_up or ((getattr(error.orig, "sqlite_errorcode", None) or 0) & 0xFF) == SQLITE_BUSY  # or extended


# How long a client waits before trying again while a shared service is away: a restart or a failover.
OUTAGE_RETRY_AFTER_S = 10


def note_outage(error: Exception, logger: logging.Logger = log, prefix: str = "") -> dict[str, str] | None:
    """If `error` is an outage rather than a bug, log it in one line (not a traceback per request while it lasts)
    and answer the headers its 503 carries; None for a bug. The API and the admin site answer it each in its way."""
    service = unreachable(error)
    if service is None:
        return None
    message = str(error).splitlines()[0]
    state = "too busy" if _too_busy(error) else "unreachable"
    logger.error("%s%s %s on %s %s: %s", prefix, service, state, request.method, request.path, message)
    g.outage_retry_after = str(OUTAGE_RETRY_AFTER_S)  # not the rate limiter's figure (_retry_after_only_when_refused)
    return {"Retry-After": g.outage_retry_after}


def handle_unexpected(error: Exception):
    db.session.rollback()
    details = {"request_id": g.get("request_id")}
    headers = note_outage(error)
    if headers:
        return error_response(ServiceUnavailable.code, ServiceUnavailable.message, 503, details, headers)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(InternalError.code, InternalError.message, 500, details)


class AppApi(Api):
    """flask-smorest Api whose error handler and documented error schema are the project envelope."""

    ERROR_SCHEMA = ErrorEnvelopeSchema

    def handle_http_exception(self, error):
        return handle_http_exception(error)

    def _register_pagination_header(self):
        """Lists page by cursor (`{items, next}`), not by flask-smorest's page numbers: its PaginationMetadata
        schema would only mislead a client reading the document."""


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    for left in ("actor", "noted"):  # by a request before this one in the same app context (a test's client)
        g.pop(left, None)


# No request body of the contract nests more than a few levels; a deeper one is refused before any parser that
# recurses (json, webargs, the idempotency hash) can run out of stack, however deep the call it runs in.
MAX_JSON_DEPTH = 32


def _require_json_body():
    if request.method in {"POST", "PUT", "PATCH", "DELETE"} and request.path.startswith("/api/"):
        has_body = (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding")
        if has_body and not request.is_json:
            _whole_body()  # too big is 413 whatever it is, with a Content-Length or chunked
            raise BadRequest("请求必须是 JSON（Content-Type: application/json）")
        if has_body:
            body = _whole_body()
            try:  # JSON is UTF-8 (RFC 8259); Python's parser would also let surrogates encoded as bytes through
                body.decode()
            except UnicodeDecodeError:
                raise BadRequest("请求内容必须是 UTF-8 编码的 JSON") from None
            _check_json_body(body)


# Text the database cannot store is refused up front as the field's validation error, on SQLite as well, instead of
# surfacing as a driver error (a 500): U+0000, which PostgreSQL text cannot hold, and lone surrogates (a "\ud800"
# escape in JSON), which are not Unicode text and cannot be encoded. No field of ours needs either.
UNSTORABLE_MESSAGE = "不能包含空字符或无效的 Unicode 字符"


def _unstorable_text(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _holds_unstorable_text(value) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and _unstorable_text(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _refuse_unstorable_json(data) -> None:
    if isinstance(data, dict):
        fields = {
            _printable(key): [UNSTORABLE_MESSAGE]
            for key, value in data.items()
            if _holds_unstorable_text(key) or _holds_unstorable_text(value)
        }
    else:
        fields = {"_schema": [UNSTORABLE_MESSAGE]} if _holds_unstorable_text(data) else {}
    if fields:
        raise fields_error(fields)


def _printable(key: str) -> str:
    """A field name fit to echo back in the error: the name itself may hold the bad character."""
    if not _unstorable_text(key):
        return key
    return key.encode(errors="backslashreplace").decode().replace("\x00", "\\x00")


_FORMS = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def refuse_unstorable_query_and_form() -> None:
    """The same for query strings and the admin site's forms. In a URL, U+0000 can only arrive as %00 (werkzeug
    decodes invalid UTF-8 to U+FFFD, never to a surrogate), so most requests are passed on the raw bytes alone. The
    admin site runs it itself, once it knows who is signed in, so that its error page keeps the menu."""
    sources = [request.args] if b"%00" in request.query_string else []
    if request.mimetype in _FORMS:
        sources.append(request.form)
    fields = {
        _printable(name): [UNSTORABLE_MESSAGE]
        for source in sources
        for name, value in source.items(multi=True)
        if _unstorable_text(name) or _unstorable_text(value)
    }
    if fields:
        raise fields_error(fields)


def _refuse_unstorable_outside_admin() -> None:
    if request.blueprint != "admin":
        refuse_unstorable_query_and_form()


def _whole_body() -> bytes:
    """The body, or 413 if it is over MAX_CONTENT_LENGTH. Werkzeug enforces the limit on a chunked body (no
    Content-Length) by reading up to it and stopping there, so a bigger body would arrive cut short and fail as
    bad JSON; one more byte left on the wire tells the two apart."""
    body = request.get_data(cache=True)
    limit = request.max_content_length
    at_limit = request.content_length is None and limit is not None and len(body) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return body


_JSON_BODY, _UNREAD = "app.json_body", object()


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    data = dict(pairs)
    if len(data) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return data


def _check_json_body(body: bytes) -> None:
    """What no body parser further down answers well, refused up front: a name given twice in one object (the
    parsers would keep the last value and silently drop the first), nesting deeper than MAX_JSON_DEPTH (a
    RecursionError in whichever parser recurses), an integer of more digits than Python reads (4,300: json.loads
    raises a plain ValueError) and text the database cannot store. The raw bytes tell whether a body could nest too
    deep or hold such text, so only those bodies are walked for them."""
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BadRequest("JSON 嵌套层数过多") from None
    except _DuplicateKey as exc:
        raise BadRequest(f"JSON 中的字段重复出现：{_printable(exc.key)}") from None
    except json.JSONDecodeError:
        return  # not JSON: the body's parser answers with its own error
    except ValueError:
        raise BadRequest("JSON 中的数字位数过多") from None
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _refuse_deep_nesting(data)
    if b"\\u" in body:  # in UTF-8, JSON carries U+0000 or a lone surrogate only as a \u escape
        _refuse_unstorable_json(data)
    request.environ[_JSON_BODY] = data  # the request's own: `g` lives as long as an app context, which may hold many


def json_body(default: Any = None) -> Any:
    """The request's JSON body as parsed once, up front, by the checks above, for every later reader (webargs, the
    idempotency layer); `default` if there is none (no body, or one that is not JSON)."""
    return request.environ.get(_JSON_BODY, default)


def _refuse_deep_nesting(data) -> None:
    """Measured without recursion."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest("JSON 嵌套层数过多")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


_NO_FIELDS = StrictSchema()


def no_body(view):
    """A POST that takes no body refuses one that says something, as every body's schema refuses an unknown field.
    An empty body, `{}` or `null`, which some clients send by default, is no body."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        raw = request.get_data(cache=True)
        if raw.strip():
            try:
                data = json.loads(raw)
            except ValueError:
                raise BadRequest("请求体不是有效的 JSON") from None
            if isinstance(data, dict):
                try:
                    _NO_FIELDS.load(data)  # every key is an unknown field, with the same message as anywhere else
                except ma.ValidationError as exc:
                    raise fields_error(exc.normalized_messages()) from None
            elif data is not None:
                raise field_error("_schema", "该请求不需要请求体")
        return view(*args, **kwargs)

    return error_docs(ValidationError, BadRequest, PayloadTooLarge)(wrapper)


def _add_headers(response):
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    if response.status_code == 204:
        response.headers.pop("Content-Type", None)  # no content, so no type: flask-smorest labels it JSON
    # A balance, a ledger, a member code, a token: one person's, and never to be kept by a cache.
    if "Authorization" in request.headers or request.path.startswith("/api/v1/auth/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _retry_after_only_when_refused(response):
    """Flask-Limiter puts its Retry-After on every answer of a limited route; it means "try again later" and belongs
    only on a refusal."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    elif g.get("outage_retry_after"):  # the limiter's own figure is its window's, not the outage's
        response.headers["Retry-After"] = g.outage_retry_after
    return response


class IdConverter(IntegerConverter):
    """`<int:…>` in an API route: an id from 1 to MAX_ID, and a bigger one is a 404 whatever the method, not a
    database overflow (a route that merely did not match would be a misleading 405 where another method has one).
    Admin pages use the plain `<page_id:…>`: their lookups refuse such ids with the site's own HTML 404."""

    def __init__(self, url_map, *args, **kwargs) -> None:
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)

    def to_python(self, value: str) -> int:
        try:
            return super().to_python(value)
        except NotThisRoute:
            raise NotFound() from None


class ApiParser(FlaskParser):
    """webargs, refusing what it would pass over in a query string: a parameter the schema does not name (a typo'd
    filter would give the whole list as if it had worked), and one given twice (only the first would be read). A JSON
    body is the one the request's checks parsed, not parsed again."""

    DEFAULT_UNKNOWN_BY_LOCATION: ClassVar[dict[str, str | None]] = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }

    def load_querystring(self, req, schema):
        if repeated := sorted(name for name, values in req.args.lists() if len(values) > 1):
            raise fields_error({name: ["参数不能重复出现"] for name in repeated})
        return super().load_querystring(req, schema)

    def _raw_load_json(self, req):
        body = json_body(_UNREAD)  # parsed already; webargs' own parse answers a body that is not JSON
        return super()._raw_load_json(req) if body is _UNREAD else body


class Blueprint(SmorestBlueprint):
    """flask-smorest's blueprint, with argument schemas built once: given a class, the parser would instantiate
    (and deep-copy the fields of) a new schema on every request. A query parameter the schema does not name is
    refused, as a body's unknown field is. A view that takes arguments documents the errors their parsing answers
    with: 422 validation_error, and 400/413 for a JSON body."""

    ARGUMENTS_PARSER = ApiParser()

    def arguments(self, schema, **kwargs):
        parse = super().arguments(schema() if isinstance(schema, type) else schema, **kwargs)
        body = kwargs.get("location", "json") == "json"
        errors = (ValidationError, BadRequest, PayloadTooLarge) if body else (ValidationError,)
        return lambda view: error_docs(*errors)(parse(view))

    def _store_endpoint_docs(self, endpoint, obj, parameters, tags, **options):
        """What every operation has, once all its decorators have documented it: an operationId (the view's name,
        which client generators name their functions after), the outage and server error answers any request can
        get, and on an operation that honours Idempotency-Key, the header that marks a replayed answer."""
        from app.idempotency.service import kept  # which imports this module

        super()._store_endpoint_docs(endpoint, obj, parameters, tags, **options)
        operations = {method: doc for method, doc in self._docs[endpoint].items() if method != "parameters"}
        # At the path's level, which every operation on it shares: an operation's own list would replace the one
        # its query arguments make.
        self._docs[endpoint]["parameters"] = [*(self._docs[endpoint]["parameters"] or []), REQUEST_ID_PARAMETER]
        for method, doc in operations.items():
            _first_sentence_as_summary(doc.get("docstring", {}))
            manual = doc.setdefault("manual_doc", {})
            manual.setdefault("operationId", endpoint if len(operations) == 1 else f"{endpoint}_{method}")
            responses = manual.setdefault("responses", {})
            document_errors(responses, InternalError, ServiceUnavailable)
            idempotent = any(p.get("name") == IDEMPOTENCY_HEADER for p in manual.get("parameters", []))
            # flask-smorest keys a success answer as its decorator was given the status (201, an int)
            for status in [*doc.get("success_status_codes", []), *responses]:
                if str(status).isdigit():
                    headers = responses.setdefault(status, {}).setdefault("headers", {})
                    headers.update(REQUEST_ID_HEADER)
                    if idempotent and kept(int(status)):
                        headers.update(REPLAYED)


def _first_sentence_as_summary(info: dict[str, str]) -> None:
    """A long docstring's first sentence is the operation's summary, the rest its description: client generators
    make the summary a one-line comment, and Swagger UI shows it in each operation's collapsed row."""
    summary = " ".join(info.get("summary", "").split())
    if len(summary) > 120 and ". " in summary:
        summary, rest = summary.split(". ", 1)
        summary = f"{summary}."
        info["description"] = "\n\n".join(filter(None, (rest, info.get("description"))))
    if summary:
        info["summary"] = summary


class _NoCookieSession(NullSession):
    def _fail(self, *args, **kwargs):
        raise RuntimeError("only the admin site has a cookie session; API requests authenticate with a bearer token")

    __setitem__ = __delitem__ = clear = pop = popitem = update = setdefault = _fail


class AdminCookieSession(SecureCookieSessionInterface):
    """Only the admin site keeps a signed cookie session; the API and the probes authenticate every request with a
    bearer token or a signature. Their requests get a null session, so they skip decoding a cookie and building
    its signer, and any attempt to write to it fails loudly instead of setting a cookie."""

    null_session_class = _NoCookieSession

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    def open_session(self, app: Flask, request):
        path = request.path
        if path == self.prefix or path.startswith(self.prefix + "/"):
            return super().open_session(app, request)
        return self.make_null_session(app)


def _decimal_bounds_as_numbers(self, field, ret, **kwargs) -> dict:
    """apispec writes a Decimal field's bounds as Decimals, and JSON writes those as strings, which makes the
    document invalid OpenAPI: the bounds go in as the numbers they are."""
    bounds = {key: ret[key] for key in ("minimum", "maximum") if isinstance(ret.get(key), Decimal)}
    return {key: int(value) if value == value.to_integral_value() else float(value) for key, value in bounds.items()}


def _ecma_patterns(self, field, ret, **kwargs) -> dict:
    """OpenAPI patterns are ECMA-262 regular expressions, where Python's end-of-string `\\Z` is an invalid escape
    (JavaScript validators reject every value, or fail to compile): it is published as `$`, which without the
    multiline flag means the same there."""
    pattern = ret.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("\\Z"):
        return {"pattern": pattern[:-2] + "$"}
    return {}


def _no_null_defaults(self, field, ret, **kwargs) -> dict:
    """A default of null says nothing a client can use, and generators read any default as "always present", which
    makes an optional field required in a request type. A query string cannot carry null at all (`?kind=null` is the
    text "null"), so a query parameter is neither nullable nor has null among its values."""
    if "default" in ret and ret["default"] is None:
        del ret["default"]
    if getattr(field.root, "text_input", False):  # a query string's schema (common._from_text)
        ret.pop("nullable", None)
        if "enum" in ret:
            ret["enum"] = [value for value in ret["enum"] if value is not None]
    return {}


def _bearer_in_any_case() -> None:
    """An authentication scheme is case-insensitive (RFC 9110), but Flask-JWT-Extended looks for `Bearer` exactly:
    `bearer <token>` is read as the same thing."""
    value = request.environ.get("HTTP_AUTHORIZATION")
    if value and not value.startswith("Bearer ") and value[:7].lower() == "bearer ":
        request.environ["HTTP_AUTHORIZATION"] = "Bearer " + value[7:]


def _options_answer(app: Flask):
    """OPTIONS names a path's methods in Allow, with no content: Flask's own answer is an empty 200 labelled HTML."""

    def answer():
        response = Flask.make_default_options_response(app)
        response.status_code = 204
        return response

    return answer


def register_http(app: Flask) -> None:
    from flask_smorest.spec.plugins import integerconverter2paramschema

    from app.extensions import api

    app.url_map.converters["int"] = IdConverter  # before any route is added
    # "//scans" is no path of ours: a 404 in the envelope, not werkzeug's HTML 308 to "/scans", which a smart bin
    # could not follow (its signature covers the path it sent).
    app.url_map.merge_slashes = False
    app.url_map.converters["page_id"] = IntegerConverter
    api.register_converter(IdConverter, integerconverter2paramschema)
    api.ma_plugin.converter.add_attribute_function(_decimal_bounds_as_numbers)
    api.ma_plugin.converter.add_attribute_function(_ecma_patterns)
    api.ma_plugin.converter.add_attribute_function(_no_null_defaults)
    app.json.ensure_ascii = False  # readable zh-CN on the wire; the body is UTF-8 either way
    app.json.sort_keys = False
    app.make_default_options_response = _options_answer(app)
    app.before_request(_assign_request_id)
    app.before_request(_bearer_in_any_case)
    app.before_request(_require_json_body)
    app.before_request(_refuse_unstorable_outside_admin)
    app.after_request(_add_headers)
    # After-request functions run last-registered first; at the front, this one runs after Flask-Limiter's.
    app.after_request_funcs.setdefault(None, []).insert(0, _retry_after_only_when_refused)
    app.register_error_handler(AppError, handle_app_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
