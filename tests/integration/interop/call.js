// Calls a Celery task by name with celery-node, as a Node.js application would, and prints
// its outcome as JSON: {"status": "SUCCESS", "result": ...} or {"status": "FAILURE",
// "exc_type": ..., "exc_message": ...}.
//   node call.js BROKER_URL BACKEND_URL QUEUE TASK '{"kwarg": ...}'
// (tests/integration/test_interop.py).
"use strict";
const celery = require("celery-node");

const [broker, backend, queue, task, kwargs] = process.argv.slice(2);
const client = celery.createClient(broker, backend, queue);
const result = client.createTask(task).applyAsync([], JSON.parse(kwargs || "{}"));
result.get(20000, 50)
  .then((value) => ({ status: "SUCCESS", result: value }))
  .catch((error) => ({ ...error, status: error.message }))
  .then((outcome) => {
    console.log(JSON.stringify(outcome));
    client.disconnect();
  });
