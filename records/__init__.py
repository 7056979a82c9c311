"""What a result is on disk, readable without torch: the row columns, verdicts and glossary
(`records.schema`) and the durable JSONL files of a results folder (`records.store`). Every other
package reads and writes results through this one; it imports nothing of the project."""
