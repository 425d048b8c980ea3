# An example of a team's own rule for `ralph-deploy check --policy docs/policies`
# (or a stack's `policies: [../docs/policies]`): every VPC names the cost
# centre that pays for it. `deny` gives errors (apply refuses them unless
# waived as `policy.tagging`), `warn` gives warnings.
package ralph.tagging

import rego.v1

deny contains finding if {
	some address, resource in input.resources
	resource.kind == "aws.vpc"
	not resource.properties.tags["cost-centre"]
	finding := {
		"msg": sprintf("`%s` has no `cost-centre` tag: add one under `tags`", [address]),
		"address": address,
	}
}
