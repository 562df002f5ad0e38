import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { describeError, errorMessage } from './format';

/** The URL namespace of the server extension. */
export const NAMESPACE = 'llm';

/** A failed call to the service: the HTTP status (0: the server could not be reached) and its message. */
export class RequestError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'RequestError';
  }

  /** What the panel shows: "Not authorised", the server's message for 502/503, else message + status. */
  get display(): string {
    return describeError(this.status, this.message);
  }
}

/**
 * Call the service at `{baseUrl}llm/{endPoint}` with Lab's token and XSRF handling.
 *
 * Answers the parsed JSON body; a failure throws a {@link RequestError} carrying the status
 * and the message taken from any of the service's error formats.
 */
export async function requestAPI<T>(endPoint = '', init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new RequestError(0, `Cannot reach the Jupyter server: ${(error as Error).message ?? error}`);
  }
  const text = await response.text();
  let body: unknown = text;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text (a proxy's error page, a plain message)
    }
  }
  if (!response.ok) {
    throw new RequestError(response.status, errorMessage(body, response.statusText || `HTTP ${response.status}`));
  }
  return body as T;
}
