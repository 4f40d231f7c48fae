// Node jaeger-client 3.19.0 as a real peer (binary thrift to UDP, chunked HTTP to the collector).
//   node jaeger_node_send.js udp PORT N      -> UDPSender, thrift binary emitBatch
//   node jaeger_node_send.js http URL N      -> HTTPSender, POST application/x-thrift, chunked
// Prints one JSON line: the ids and names of every span it finished.
const path = require('path');
const { initTracer } = require(path.join(__dirname, '..', '..', 'node', 'node_modules', 'jaeger-client'));
const [mode, target, nStr] = process.argv.slice(2);
const n = parseInt(nStr || '1', 10);
const reporter = { flushIntervalMs: 50 };
if (mode === 'udp') { reporter.agentHost = '127.0.0.1'; reporter.agentPort = parseInt(target, 10); }
else { reporter.collectorEndpoint = target; }
const tracer = initTracer({ serviceName: 'jc-node-' + mode, sampler: { type: 'const', param: 1 }, reporter },
  { logger: { info: () => {}, error: m => console.error('ERROR', m) }, tags: { env: 'test' } });
const out = [];
for (let i = 0; i < n; i++) {
  const root = tracer.startSpan('GET /orders/' + i, { tags: { 'span.kind': 'server', 'http.status_code': 200 } });
  const child = tracer.startSpan('SELECT orders', { childOf: root, tags: { 'span.kind': 'client', 'peer.port': 5432 } });
  child.log({ event: 'query', rows: 3 });
  child.finish(); root.finish();
  for (const s of [child, root]) {
    const c = s.context();
    out.push({ trace_id: c.traceIdStr.padStart(32, '0'), span_id: c.spanIdStr.padStart(16, '0'),
               parent_span_id: c.parentIdStr ? c.parentIdStr.padStart(16, '0') : '', name: s.operationName });
  }
}
setTimeout(() => tracer.close(() => { console.log(JSON.stringify(out)); }), 300);
