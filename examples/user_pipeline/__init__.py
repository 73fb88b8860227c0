"""The batch pipeline under fire: 10 batches x 10 pages x 10 users, inserts that fail after
writing, workers killed at random. See README.md."""
