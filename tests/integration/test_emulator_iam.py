"""IAM's SimulatePrincipalPolicy on the local SageMaker: what SDK v3 asks before it creates a job."""

import json

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.aws

TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}


def test_role_policies_decide_as_iam_decides(local_sagemaker):
    iam = local_sagemaker.client("iam")
    arn = iam.create_role(RoleName="SageMakerRole", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]

    def decisions(actions, resources=None):
        kw = {"ResourceArns": resources} if resources else {}
        return [r["EvalDecision"] for r in iam.simulate_principal_policy(PolicySourceArn=arn, ActionNames=actions,
                                                                         **kw)["EvaluationResults"]]

    assert decisions(["s3:PutObject", "sagemaker:CreateTrainingJob"]) == ["implicitDeny", "implicitDeny"]
    iam.put_role_policy(RoleName="SageMakerRole", PolicyName="bucket", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*"], "Resource": "arn:aws:s3:::sagebook-test/*"},
            {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "sagemaker:DeleteEndpoint", "Resource": "*"}]}))
    assert decisions(["s3:PutObject"], ["arn:aws:s3:::sagebook-test/x"]) == ["allowed"]
    assert decisions(["s3:PutObject"], ["arn:aws:s3:::other-bucket/x"]) == ["implicitDeny"]
    assert decisions(["sagemaker:CreateTrainingJob", "sagemaker:DeleteEndpoint"]) == ["allowed", "explicitDeny"]
    with pytest.raises(ClientError) as e:
        iam.simulate_principal_policy(PolicySourceArn=arn.replace("SageMakerRole", "Nobody"), ActionNames=["s3:*"])
    assert e.value.response["Error"]["Code"] == "NoSuchEntity"
    assert iam.get_role(RoleName="SageMakerRole")["Role"]["RoleName"] == "SageMakerRole"  # the rest is moto's


def test_aws_managed_policies_can_be_attached_and_are_evaluated(local_sagemaker):
    """A fresh account has AmazonSageMakerFullAccess; SDK v3's role check passes with it."""
    iam = local_sagemaker.client("iam")
    arn = iam.create_role(RoleName="Exec", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    iam.attach_role_policy(RoleName="Exec", PolicyArn="arn:aws:iam::aws:policy/AmazonSageMakerFullAccess")
    results = iam.simulate_principal_policy(PolicySourceArn=arn, ActionNames=[
        "sagemaker:CreateTrainingJob", "sagemaker:CreateEndpoint", "iam:CreateUser"])["EvaluationResults"]
    assert [r["EvalDecision"] for r in results] == ["allowed", "allowed", "implicitDeny"]
