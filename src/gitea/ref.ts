/**
 * True when `ref` is a full ref name git accepts (`git check-ref-format` rules), under `refs/`, and safe to pass
 * to git and to a build's environment: no component starting with `-`, at most 1024 bytes.
 */
export function isRefName(ref: string): boolean {
  if (!ref.startsWith("refs/") || Buffer.byteLength(ref, "utf8") > 1024) return false;
  // Control characters, DEL, space and the characters git reserves: ~ ^ : ? * [ \
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(ref)) return false;
  if (ref.includes("..") || ref.includes("@{") || ref === "@" || ref.endsWith(".") || ref.endsWith("/")) return false;
  const parts = ref.split("/");
  if (parts.length < 3) return false;
  return parts.every((p) => p !== "" && !p.startsWith(".") && !p.startsWith("-") && !p.endsWith(".lock"));
}
