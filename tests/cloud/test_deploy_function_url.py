"""Lambda function URLs: the plan for every (desired, current) pair, and the CLI against moto_server.

A public URL (``--url-auth none``) is allowed only when the service checks callers itself
(a channel's device registry), and it carries exactly the two resource-policy statements
AWS asks of public URLs; closing it again (``--url-auth iam``) removes them.
"""

from __future__ import annotations

import json

import pytest
from deploy_support import cli, push_images
from hypothesis import given
from hypothesis import strategies as st
from service_support import TinySealed

from bentoedge.bentos.errors import DeployError
from bentoedge.cloud.deploy.plan import (
    PUBLIC_URL_STATEMENTS,
    LambdaCurrent,
    LambdaDesired,
    Step,
    plan_function_url,
    plan_lambda,
    undo,
)

ROLE = "arn:aws:iam::123456789012:role/bentoedge-exec"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bentoedge:v1"
CHANNEL_ENV = {"BENTOEDGE_MODEL": "digits:v1", "BENTOEDGE_CHANNEL": "s3://fleet/digits",
               "BENTOEDGE_CHANNEL_ROOT_SHA256": "ab" * 32}


def desired(url_auth: str | None, env: dict[str, str] | None = None) -> LambdaDesired:
    return LambdaDesired("digits-fn", "digits", "v1", IMAGE, ROLE, env=CHANNEL_ENV if env is None else env,
                         url_auth=url_auth)


def apply(steps: list[Step], cur: LambdaCurrent) -> LambdaCurrent:
    """What AWS holds after ``steps``: the URL's AuthType and the policy's statement ids."""
    url, statements = cur.url_auth, set(cur.statements)
    for s in steps:
        if s.action in ("create_function_url_config", "update_function_url_config"):
            assert s.action == ("create_function_url_config" if url is None else "update_function_url_config")
            url = str(s.args["AuthType"])
        elif s.action == "add_permission":
            assert s.resource not in statements
            statements.add(s.resource)
        elif s.action == "remove_permission":
            statements.remove(s.resource)
    return LambdaCurrent(True, IMAGE, CHANNEL_ENV, 2048, url, frozenset(statements))


@given(want=st.sampled_from([None, "AWS_IAM", "NONE"]), have=st.sampled_from([None, "AWS_IAM", "NONE"]),
       statements=st.sets(st.sampled_from([*PUBLIC_URL_STATEMENTS, "someone-elses"])))
def test_the_plan_reaches_the_wanted_url_and_only_a_public_one_is_public(
        want: str | None, have: str | None, statements: set[str]) -> None:
    cur = LambdaCurrent(True, IMAGE, CHANNEL_ENV, 2048, have, frozenset(statements))
    steps = plan_function_url(desired(want), cur)
    after = apply(steps, cur)
    if want is None:
        assert steps == []  # no --url-auth: whatever URL there is stays as it is
        return
    assert after.url_auth == want
    public = set(PUBLIC_URL_STATEMENTS) <= after.statements
    assert public == (want == "NONE") and (want == "NONE" or not set(PUBLIC_URL_STATEMENTS) & after.statements)
    assert "someone-elses" in after.statements or "someone-elses" not in statements  # not ours: untouched
    assert plan_function_url(desired(want), after) == []  # a second deploy plans nothing
    # Closing a public URL changes its AuthType before it removes a statement.
    actions = [s.action for s in steps]
    if "remove_permission" in actions and "update_function_url_config" in actions:
        assert actions.index("update_function_url_config") < actions.index("remove_permission")


def test_a_new_public_function_gets_its_url_and_statements_and_each_can_be_undone() -> None:
    steps = plan_lambda(desired("NONE"), LambdaCurrent())
    assert [s.action for s in steps] == ["create_function", "create_function_url_config", "add_permission",
                                         "add_permission"]
    assert {s.args.get("Action") for s in steps[2:]} == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    assert [undo(s).action for s in steps if undo(s)] == [  # type: ignore[union-attr]
        "delete_function", "delete_function_url_config", "remove_permission", "remove_permission"]


def test_a_public_url_needs_the_service_to_check_callers() -> None:
    with pytest.raises(DeployError, match="--channel URL --channel-root-sha256"):
        plan_lambda(desired("NONE", {"BENTOEDGE_MODEL": "digits:v1"}), LambdaCurrent())
    with pytest.raises(DeployError, match="BENTOEDGE_AUTH=off"):
        plan_lambda(desired("NONE", CHANNEL_ENV | {"BENTOEDGE_AUTH": "off"}), LambdaCurrent())
    assert plan_lambda(desired("AWS_IAM", {"BENTOEDGE_MODEL": "digits:v1", "BENTOEDGE_AUTH": "iam"}),
                       LambdaCurrent())


# ---- against moto_server ------------------------------------------------------------------------

def test_deploy_lambda_function_url_iam_then_public_then_closed(aws: str, tiny_sealed: TinySealed) -> None:
    import boto3

    push_images(aws)
    base = ["deploy", "lambda", tiny_sealed.tag, "--function", "url-fn", "--role", ROLE, "--allow-no-kms",
            "--image", IMAGE]
    lam = boto3.client("lambda", endpoint_url=aws)

    code, out = cli(*base, "--url-auth", "iam")
    assert code == 0 and "create function url config: url-fn" in out, out
    url = lam.get_function_url_config(FunctionName="url-fn")
    assert url["AuthType"] == "AWS_IAM" and f"invoke: {url['FunctionUrl'].rstrip('/')}" in out and "SigV4" in out
    env = lam.get_function(FunctionName="url-fn")["Configuration"]["Environment"]["Variables"]
    assert env["BENTOEDGE_AUTH"] == "iam"  # no registry given: IAM is the gate, and the handler checks it did

    code, out = cli(*base)  # a redeploy without --url-auth keeps the URL and the settings it needs
    assert code == 0 and "nothing to do" in out and "AWS_IAM" not in out, out
    assert lam.get_function(FunctionName="url-fn")["Configuration"]["Environment"]["Variables"][
        "BENTOEDGE_AUTH"] == "iam"

    code, out = cli(*base, "--url-auth", "none")
    assert code == 2 and "--channel URL --channel-root-sha256" in out and "Traceback" not in out, out
    assert lam.get_function_url_config(FunctionName="url-fn")["AuthType"] == "AWS_IAM"  # nothing changed

    code, out = cli(*base, "--url-auth", "none", "--channel", "s3://fleet/tiny", "--channel-root-sha256", "CD" * 32)
    assert code == 0 and "public; devices sign" in out, out
    assert lam.get_function_url_config(FunctionName="url-fn")["AuthType"] == "NONE"
    env = lam.get_function(FunctionName="url-fn")["Configuration"]["Environment"]["Variables"]
    assert env["BENTOEDGE_CHANNEL"] == "s3://fleet/tiny" and env["BENTOEDGE_CHANNEL_ROOT_SHA256"] == "cd" * 32
    assert "BENTOEDGE_AUTH" not in env
    sids = {s["Sid"] for s in json.loads(lam.get_policy(FunctionName="url-fn")["Policy"])["Statement"]}
    assert set(PUBLIC_URL_STATEMENTS) <= sids
    code, out = cli(*base)  # the URL stays public, so the registry settings may not be dropped
    assert code == 2 and "--channel URL --channel-root-sha256" in out, out

    code, out = cli(*base, "--url-auth", "iam")
    assert code == 0 and "remove permission" in out, out
    assert lam.get_function_url_config(FunctionName="url-fn")["AuthType"] == "AWS_IAM"
    try:
        left = {s["Sid"] for s in json.loads(lam.get_policy(FunctionName="url-fn")["Policy"])["Statement"]}
    except lam.exceptions.ResourceNotFoundException:
        left = set()
    assert not set(PUBLIC_URL_STATEMENTS) & left
    assert cli("deploy", "delete", "lambda", "url-fn")[0] == 0
