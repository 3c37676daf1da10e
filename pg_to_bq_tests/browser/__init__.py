"""End-to-end tests of what analysts see: the demo stack, its GraphQL API and the UI in Chromium."""
