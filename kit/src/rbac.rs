//! Questions asked of the API server's own authorizers: who a token is (TokenReview) and
//! what an identity may do (SubjectAccessReview). Reading Roles and bindings would be a
//! second, weaker implementation of RBAC; asking the authorizer is the real answer.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::Api;

/// The identity a ServiceAccount's tokens carry: its user name and groups.
pub fn service_account(namespace: &str, account: &str) -> UserInfo {
    UserInfo {
        username: Some(format!("system:serviceaccount:{namespace}:{account}")),
        groups: Some(vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}")]),
        ..UserInfo::default()
    }
}

/// Who `token` authenticates as, or `None` when the API server rejects it.
pub async fn token_identity(client: &kube::Client, token: &str) -> anyhow::Result<Option<UserInfo>> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_owned()), ..Default::default() },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone()).create(&Default::default(), &review).await?;
    let status = answer.status.unwrap_or_default();
    Ok(if status.authenticated == Some(true) { status.user } else { None })
}

/// May `who` do `verb` on `resource` (`(group, resource)`) in `namespace` (cluster-wide when
/// `None`)?
pub async fn may(
    client: &kube::Client,
    who: &UserInfo,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: who.username.clone(),
            groups: who.groups.clone(),
            uid: who.uid.clone(),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone()).create(&Default::default(), &review).await?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// One expected answer: `who` may (or may not) do `verb` on `resource` in `namespace`.
pub struct Expect<'a> {
    pub allowed: bool,
    pub verb: &'a str,
    pub resource: (&'a str, &'a str),
    pub namespace: Option<&'a str>,
}

/// Each expectation asked of the authorizer; the ones it answers otherwise, described.
pub async fn unexpected(client: &kube::Client, who: &UserInfo, expected: &[Expect<'_>]) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    for expect in expected {
        let allowed = may(client, who, expect.verb, expect.resource, expect.namespace).await?;
        if allowed != expect.allowed {
            let (group, resource) = expect.resource;
            let kind = if group.is_empty() { resource.to_owned() } else { format!("{resource}.{group}") };
            let place = expect.namespace.map_or("cluster-wide".to_owned(), |namespace| format!("in {namespace}"));
            let can = if allowed { "may" } else { "may not" };
            wrong.push(format!("{can} {} {kind} {place}", expect.verb));
        }
    }
    Ok(wrong)
}
