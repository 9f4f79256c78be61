// Validates Kubernetes objects with the JSON schemas of their CRDs, as packaged by
// kubernetes-models: Istio's VirtualService (@kubernetes-models/istio) and the Prometheus
// operator's PrometheusRule (@kubernetes-models/prometheus-operator). Reads a JSON array
// of {"file", "object"} on stdin; prints `ok <file>` or `invalid <file>: <errors>` per
// object; exits 1 when any object is invalid or of a kind it does not know.
import { VirtualService } from '@kubernetes-models/istio/networking.istio.io/v1/VirtualService';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';

const models = {
  'networking.istio.io/v1 VirtualService': VirtualService,
  'monitoring.coreos.com/v1 PrometheusRule': PrometheusRule,
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let failed = false;
for (const { file, object } of JSON.parse(Buffer.concat(chunks).toString('utf8'))) {
  const Model = models[`${object.apiVersion} ${object.kind}`];
  if (!Model) {
    console.log(`invalid ${file}: no model for ${object.apiVersion} ${object.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok ${file}`);
  } catch (error) {
    const details = error.errors ? JSON.stringify(error.errors) : '';
    console.log(`invalid ${file}: ${error.message} ${details}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
