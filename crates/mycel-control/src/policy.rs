//! Who may call which route: operators' tokens carry a role (viewer, deployer, admin),
//! optionally narrowed to components and locations and bounded in time, and every
//! route of the API has a rule here. A route without one is refused: the router asks
//! this module before any handler runs, so a new handler cannot forget to.
//!
//! Pure: the middleware in `api/` hands in the route, the method and the token's
//! grant, and gets a decision.

pub use mycel_core::access::{Denied, Grant, Role};

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, the CA certificate, a join (which carries its own token).
    Public,
    /// An operator's token of at least this role.
    Operator(Role),
    /// A node's credential (the handler checks it acts for itself) or an operator's
    /// token of at least this role.
    NodeOr(Role),
}

/// Every route of the API and what it needs; `None` for a route with no rule, which
/// the router refuses. Routes are as axum matches them (`/v1/deployments/{name}`).
pub fn need(method: &str, route: &str) -> Option<Need> {
    use Need::{NodeOr, Operator, Public};
    use Role::{Admin, Deployer, Viewer};
    Some(match (method, route) {
        ("GET", "/v1/health" | "/v1/tls/ca") => Public,
        ("POST", "/v1/nodes/{name}/join") => Public,

        ("GET", "/v1/blobs/{hash}") => NodeOr(Viewer),
        ("PUT", "/v1/blobs/{hash}") => NodeOr(Deployer),
        ("POST", "/v1/blobs/missing") => Operator(Deployer),

        ("GET", "/v1/components") => Operator(Viewer),
        ("GET", "/v1/components/{name}/versions") => Operator(Viewer),
        ("GET", "/v1/components/{name}/dependents") => Operator(Viewer),
        ("GET", "/v1/components/{name}/versions/{reference}") => NodeOr(Viewer),
        ("POST", "/v1/components/{name}/versions") => Operator(Deployer),
        ("POST", "/v1/components/{name}/versions/{reference}/rebuild") => Operator(Deployer),

        ("GET", "/v1/deployments") => Operator(Viewer),
        ("GET", "/v1/deployments/{name}/rollout" | "/v1/deployments/{name}/history") => {
            Operator(Viewer)
        }
        ("PUT" | "DELETE", "/v1/deployments/{name}") => Operator(Deployer),
        ("POST", "/v1/deployments/{name}/rollback") => Operator(Deployer),
        ("GET", "/v1/status" | "/v1/routes" | "/v1/prometheus/targets") => Operator(Viewer),
        ("GET", "/v1/replicas/{replica}/logs") => Operator(Viewer),

        ("GET", "/v1/federations" | "/v1/federations/{id}") => Operator(Viewer),
        ("POST", "/v1/federations" | "/v1/federations/{id}/stop") => Operator(Deployer),
        ("GET", "/v1/nodes/{name}/tasks") => NodeOr(Viewer),
        ("POST", "/v1/tasks/{id}") => NodeOr(Admin),

        ("PUT", "/v1/nodes/{name}") => NodeOr(Admin),
        ("DELETE", "/v1/nodes/{name}") => Operator(Admin),
        ("POST", "/v1/nodes/{name}/heartbeat") => NodeOr(Admin),
        ("GET", "/v1/nodes/{name}/assignments") => NodeOr(Viewer),
        ("GET", "/v1/nodes/{name}/grant") => NodeOr(Admin),
        ("POST", "/v1/nodes/{name}/certificate") => NodeOr(Admin),
        ("POST", "/v1/join-tokens") => Operator(Admin),
        // A fleet certificate lets its holder speak to agents as a gateway.
        ("POST", "/v1/tls/fleet-certificate") => Operator(Admin),

        ("GET" | "POST", "/v1/tokens") => Operator(Admin),
        ("DELETE", "/v1/tokens/{name}") => Operator(Admin),
        ("GET", "/v1/audit") => Operator(Admin),
        _ => return None,
    })
}

/// Whether `grant` may make a call needing `need` at `now_ms`, on a route whose
/// `{name}` is `component` where it names a component or deployment.
pub fn decide(
    grant: &Grant,
    need: Need,
    component: Option<&str>,
    now_ms: u64,
) -> Result<(), Denied> {
    let role = match need {
        Need::Public => return Ok(()),
        Need::Operator(role) | Need::NodeOr(role) => role,
    };
    if grant.expires_ms.is_some_and(|at| now_ms >= at) {
        return Err(Denied(format!(
            "token {:?} has expired; an admin can make a new one with `mycel token create`",
            grant.name
        )));
    }
    if grant.role < role {
        let article = |role: Role| if role == Role::Admin { "an" } else { "a" };
        return Err(Denied(format!(
            "token {:?} is {} {}; this needs {} {} token",
            grant.name,
            article(grant.role),
            grant.role.as_str(),
            article(role),
            role.as_str()
        )));
    }
    match component {
        Some(component) => grant.check_component(component),
        None => Ok(()),
    }
}

/// Whether a route's `{name}` names a component or a deployment (whose name is its
/// component's unless given), so that a token's component scope applies to it.
pub fn names_component(route: &str) -> bool {
    route.starts_with("/v1/components/{name}") || route.starts_with("/v1/deployments/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role) -> Grant {
        Grant {
            role,
            ..Grant::admin("t")
        }
    }

    #[test]
    fn each_role_may_do_what_the_ones_below_may() {
        let needs = [
            need("GET", "/v1/status").unwrap(),
            need("PUT", "/v1/deployments/{name}").unwrap(),
            need("POST", "/v1/join-tokens").unwrap(),
        ];
        let allowed = |role| {
            needs
                .iter()
                .map(|&n| decide(&grant(role), n, None, 0).is_ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Role::Viewer), [true, false, false]);
        assert_eq!(allowed(Role::Deployer), [true, true, false]);
        assert_eq!(allowed(Role::Admin), [true, true, true]);
        let refusal = decide(&grant(Role::Viewer), needs[1], None, 0).unwrap_err();
        assert_eq!(
            refusal.0,
            "token \"t\" is a viewer; this needs a deployer token"
        );
    }

    #[test]
    fn scopes_and_expiry_narrow_a_role() {
        let scoped = Grant {
            components: vec!["echo".into()],
            locations: vec!["tokyo".into()],
            expires_ms: Some(1_000),
            ..grant(Role::Deployer)
        };
        let deploy = need("PUT", "/v1/deployments/{name}").unwrap();
        assert!(decide(&scoped, deploy, Some("echo"), 999).is_ok());
        let other = decide(&scoped, deploy, Some("resnet"), 999).unwrap_err();
        assert!(
            other.0.contains("only component echo; not \"resnet\""),
            "{other}"
        );
        let late = decide(&scoped, deploy, Some("echo"), 1_000).unwrap_err();
        assert!(late.0.contains("has expired"), "{late}");
        assert!(scoped.check_location("tokyo").is_ok());
        assert!(scoped.check_location("london").is_err());
        // Public routes ask nothing of a token, not even that it is current.
        assert!(decide(&scoped, Need::Public, None, 5_000).is_ok());
    }

    #[test]
    fn a_route_without_a_rule_has_none() {
        assert_eq!(need("GET", "/v1/secrets"), None);
        assert_eq!(need("PATCH", "/v1/status"), None);
        assert_eq!(need("GET", "/v1/health"), Some(Need::Public));
        assert!(names_component("/v1/deployments/{name}/rollback"));
        assert!(!names_component("/v1/nodes/{name}"));
    }

    #[test]
    fn roles_read_and_write_by_name() {
        for role in [Role::Viewer, Role::Deployer, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("viewer, deployer or admin"));
    }
}
