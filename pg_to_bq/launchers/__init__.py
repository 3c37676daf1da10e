"""Run launchers: AWS Lambda, and a router between ECS and Lambda."""
