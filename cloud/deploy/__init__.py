"""Serverless deploys of the cloud service: a pure plan (plan.py) and the boto3 shell (aws.py)."""
