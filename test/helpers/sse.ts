// A Server-Sent Events parser that follows the WHATWG HTML "event stream interpretation" steps, as a browser's
// EventSource does: lines end at CRLF, lone CR or LF; a blank line dispatches; `data` lines join with LF.

export interface SseEvent {
  event: string;
  data: string;
  /** The last event ID in force when the event was dispatched. */
  id: string;
}

/** Incremental parser: feed decoded text as it arrives, read the dispatched events. */
export function createSseParser(): { push(text: string): SseEvent[]; end(): SseEvent[]; comments: string[] } {
  let buffer = "";
  let data = "";
  let event = "";
  let lastId = "";
  const comments: string[] = [];

  const line = (l: string, out: SseEvent[]) => {
    if (l === "") {
      if (data !== "") {
        out.push({ event: event === "" ? "message" : event, data: data.endsWith("\n") ? data.slice(0, -1) : data, id: lastId });
      }
      data = "";
      event = "";
      return;
    }
    if (l.startsWith(":")) {
      comments.push(l.slice(1));
      return;
    }
    const colon = l.indexOf(":");
    const field = colon === -1 ? l : l.slice(0, colon);
    let value = colon === -1 ? "" : l.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data += `${value}\n`;
    else if (field === "id" && !value.includes("\0")) lastId = value;
  };

  const drain = (final: boolean): SseEvent[] => {
    const out: SseEvent[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buffer);
      if (!m) break;
      // A CR at the very end may be the first half of a CRLF still on its way.
      if (m[0] === "\r" && m.index === buffer.length - 1 && !final) break;
      line(buffer.slice(0, m.index), out);
      buffer = buffer.slice(m.index + m[0].length);
    }
    return out;
  };

  return {
    push(text) {
      buffer += text;
      return drain(false);
    },
    // At the end of the stream an unterminated event is discarded, as the spec says.
    end: () => drain(true),
    comments,
  };
}

/** Reads a whole SSE response (it must end) and parses it. */
export async function readSse(res: Response): Promise<SseEvent[]> {
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const events: SseEvent[] = [];
  for await (const chunk of (res.body ?? []) as unknown as AsyncIterable<Uint8Array>)
    events.push(...parser.push(decoder.decode(chunk, { stream: true })));
  events.push(...parser.push(decoder.decode()), ...parser.end());
  return events;
}
