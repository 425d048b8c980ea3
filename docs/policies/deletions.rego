# An example over the plan: `input.changes` holds each change's address,
# kind and action when `plan` or `apply` judges a plan. Deleting a secret
# loses its value; ask for a second look.
package ralph.deletions

import rego.v1

warn contains finding if {
	some change in input.changes
	change.action in {"delete", "replace"}
	change.kind == "aws.secret"
	finding := {
		"msg": sprintf("the plan %ss the secret `%s`: its value goes with it", [change.action, change.address]),
		"address": change.address,
	}
}
