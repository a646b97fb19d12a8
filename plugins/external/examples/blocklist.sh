#!/bin/sh
# A recipient blocklist for Sluice's external plugin in POSIX shell: a
# sketch of the protocol with no JSON parser. It relies on two promises of
# the protocol (docs/plugins.md, "Plugins in any language"): every request
# is one line, and it starts with {"id":N,"hook":"NAME", in that order;
# the hook's arguments come last, as "args":{...}}. It matches the whole
# recipient argument with case patterns, which is enough for a fixed list
# of plain ASCII addresses; a real plugin would use jq or another language.
#
# [plugins.shblocklist]
# use = "external"
# command = ["sh", "plugins/external/examples/blocklist.sh"]
#
# With BLOCKLIST_TEST_FAULTS=1, crash@example.test makes it exit and
# hang@example.test makes it wait forever, for the tests.

IFS= read -r hello || exit 1
case $hello in
'{"sluice":1,'*) ;;
*) echo "unknown hello: $hello" >&2; exit 1 ;;
esac
printf '%s\n' '{"hooks":["rcpt"]}'

while IFS= read -r line; do
	id=${line#'{"id":'}
	id=${id%%,*}
	case $line in
	*'"args":{"recipient":"blocked@example.test"}}')
		printf '{"id":%s,"code":"deny","msg":"This mailbox is closed","enhanced":"5.1.1","notes":{"listed":"blocked@example.test"}}\n' "$id" ;;
	*'"args":{"recipient":"busy@example.test"}}')
		printf '{"id":%s,"code":"denysoft","msg":"Mailbox busy, try again later","enhanced":"4.2.1"}\n' "$id" ;;
	*'"args":{"recipient":"crash@example.test"}}')
		if [ "$BLOCKLIST_TEST_FAULTS" = 1 ]; then echo "crashing on purpose" >&2; exit 3; fi
		printf '{"id":%s,"code":"declined"}\n' "$id" ;;
	*'"args":{"recipient":"hang@example.test"}}')
		if [ "$BLOCKLIST_TEST_FAULTS" = 1 ]; then sleep 3600; fi
		printf '{"id":%s,"code":"declined"}\n' "$id" ;;
	*)
		printf '{"id":%s,"code":"declined"}\n' "$id" ;;
	esac
done
