# The two commands a new user needs (see README.md):
#   make demo   run the pipeline end to end on the local stack and print a summary
#               (KEEP=1: keep it all running until Ctrl-C, to query the views)
#   make test   everything: fmt, clippy, unit, integration and fault tests on the real local stack
# Both install what they need (apt packages, pinned cargo tools) and stop what they start.

.PHONY: demo test bench stack-up stack-down stack-status

demo:
	bash deploy/local/demo.sh $(if $(filter 1,$(KEEP)),--keep-running)

test:
	bash deploy/local/test.sh

bench:
	bash deploy/local/bench.sh

stack-up:
	bash deploy/local/stack.sh start

stack-down:
	bash deploy/local/stack.sh stop

stack-status:
	bash deploy/local/stack.sh status
