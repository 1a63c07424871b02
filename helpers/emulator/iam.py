"""IAM on the local SageMaker: ``SimulatePrincipalPolicy`` for roles, which moto does not implement.

SDK v3 simulates the execution role's permissions before it creates a job, and refuses a role that
lacks them. Here the role's inline and attached policies (moto keeps them) are evaluated with moto's
own policy evaluator: an explicit ``Deny`` wins, then an ``Allow``, else ``implicitDeny``, as IAM
decides. Conditions, permission boundaries and organization policies are not evaluated.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from helpers.emulator.server import ACCOUNT_ID, Request, Route

NS = "https://iam.amazonaws.com/doc/2010-05-08/"


def _members(form: dict[str, list[str]], name: str) -> list[str]:
    keys = sorted((k for k in form if k.startswith(f"{name}.member.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [form[k][0] for k in keys]


def decide(policies: list[Any], action: str, resource: str) -> str:
    """IAM's decision for one action on one resource under a principal's policies."""
    from moto.iam.access_control import PermissionResult

    results = [p.is_action_permitted(action, resource) for p in policies]
    if PermissionResult.DENIED in results:
        return "explicitDeny"
    return "allowed" if PermissionResult.PERMITTED in results else "implicitDeny"


def role_policies(role: Any) -> list[Any]:
    from moto.iam.access_control import IAMPolicy

    return [IAMPolicy(doc) for doc in role.policies.values()] + [IAMPolicy(p) for p in role.managed_policies.values()]


def simulate_principal_policy(request: Request) -> tuple[int, dict[str, str], bytes]:
    from moto.iam.models import iam_backends

    form = parse_qs(request.body.decode("utf-8", errors="replace"))
    source = (form.get("PolicySourceArn") or [""])[0]
    actions = _members(form, "ActionNames")
    resources = _members(form, "ResourceArns") or ["*"]
    if ":role/" not in source:
        return _error("InvalidInput", f"The local SageMaker simulates roles only, not {source or 'nothing'}.", 400)
    try:
        role = iam_backends[ACCOUNT_ID]["aws"].get_role_by_arn(source)
    except Exception:  # noqa: BLE001 - moto's IAMNotFoundException
        return _error("NoSuchEntity", f"The role with name {source.rsplit('/', 1)[-1]} cannot be found.", 404)
    policies = role_policies(role)
    members = []
    for action in actions:
        for resource in resources:
            members.append(f"<member><EvalActionName>{escape(action)}</EvalActionName>"
                           f"<EvalResourceName>{escape(resource)}</EvalResourceName>"
                           f"<EvalDecision>{decide(policies, action, resource)}</EvalDecision>"
                           "<MatchedStatements/><MissingContextValues/></member>")
    body = (f'<SimulatePrincipalPolicyResponse xmlns="{NS}"><SimulatePrincipalPolicyResult>'
            f"<IsTruncated>false</IsTruncated><EvaluationResults>{''.join(members)}</EvaluationResults>"
            f"</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>{os.urandom(16).hex()}</RequestId>"
            "</ResponseMetadata></SimulatePrincipalPolicyResponse>")
    return 200, {"Content-Type": "text/xml"}, body.encode()


def _error(code: str, message: str, status: int) -> tuple[int, dict[str, str], bytes]:
    body = (f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{os.urandom(16).hex()}</RequestId></ErrorResponse>")
    return status, {"Content-Type": "text/xml"}, body.encode()


def routes() -> list[Route]:
    import re

    return [Route("iam", "POST", re.compile(r"^/$"), simulate_principal_policy, action="SimulatePrincipalPolicy")]
