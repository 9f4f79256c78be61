// Parses a mermaid Gantt chart (stdin) with mermaid's own parser and prints each task as
// `<id> <start> <end>` (ISO 8601, UTC): what a reader of the chart sees, dates included.
// Exit 1 with mermaid's message when the chart does not parse. Run with TZ=UTC.
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const text = Buffer.concat(chunks).toString('utf8');
try {
  await mermaid.parse(text);
  const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
  for (const task of diagram.db.getTasks()) {
    console.log(`${task.id} ${new Date(task.startTime).toISOString()} ${new Date(task.endTime).toISOString()}`);
  }
} catch (error) {
  console.error(error.message);
  process.exit(1);
}
