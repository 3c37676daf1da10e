"""Run launchers: where a run executes. The Lambda run launcher (`lambda_launcher`) and the
function's handler that runs the run inside Lambda (`lambda_handler`), and the router that
sends each run to ECS or Lambda (`router`, its rules in `routing`).

May import: `pg_to_bq.planning` (settings), Dagster and dagster-aws, boto3. The class paths
named in dagster.yaml (`pg_to_bq.launchers.router`, `pg_to_bq.launchers.lambda_launcher`)
are stable.
"""
